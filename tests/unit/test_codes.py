"""Verification codes: derived per job under the workers' key, checked against their hash."""

from __future__ import annotations

import re

from verimail_shared.codes import code_matches, hash_code, job_code, new_key

KEY = b"k" * 32


def test_a_job_has_one_code_however_often_it_is_derived() -> None:
    assert job_code(KEY, "job-1") == job_code(KEY, "job-1")


def test_codes_differ_by_job_and_by_key() -> None:
    codes = {job_code(KEY, "job-1"), job_code(KEY, "job-2"), job_code(new_key(), "job-1")}
    assert len(codes) == 3


def test_a_code_is_43_url_safe_characters_that_match_only_their_own_hash() -> None:
    code = job_code(KEY, "job-1")
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", code)
    assert code_matches(hash_code(code), code)
    assert not code_matches(hash_code(code), job_code(KEY, "job-2"))
