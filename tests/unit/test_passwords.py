"""Password hashing, checking, rehashing and the common-password blocklist."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from typing import Any

import pytest

from verimail_api.passwords import Passwords, cores
from verimail_api.schemas import CreateUserRequest, check_password, common_passwords, parse
from verimail_shared.errors import InvalidArgument
from verimail_shared.settings import Settings

BODY = {"username": "alice", "full_name": "Alice Liddell", "email": "alice@example.com"}


def settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


def test_the_blocklist_has_ten_thousand_entries() -> None:
    assert len(common_passwords()) == 10_000
    assert {"password", "12345678", "iloveyou"} <= common_passwords()


@pytest.mark.parametrize("password", ["password", "PASSWORD", "12345678", "baseball", "trustno1"])
def test_common_passwords_are_refused(password: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse(CreateUserRequest, {**BODY, "password": password})
    assert "too common" in caught.value.violations[0].description


async def test_hashes_are_argon2id_at_owasp_minimums_and_verify() -> None:
    passwords = Passwords(settings())
    hashed = await passwords.hash("correct horse battery")
    assert hashed.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert await passwords.verify(hashed, "correct horse battery") == (True, None)
    assert await passwords.verify(hashed, "wrong horse battery") == (False, None)
    assert await passwords.verify("not a hash", "x") == (False, None)
    passwords.close()


async def test_a_changed_parameter_rehashes_at_the_next_successful_check() -> None:
    old = Passwords(settings())
    hashed = await old.hash("correct horse battery")
    stronger = Passwords(settings(argon2_time_cost=3))
    ok, rehashed = await stronger.verify(hashed, "correct horse battery")
    assert ok and rehashed is not None and "t=3" in rehashed
    assert await stronger.verify(hashed, "wrong") == (False, None)
    old.close()
    stronger.close()


def test_parameters_below_owasp_are_refused() -> None:
    with pytest.raises(ValueError, match="argon2"):
        settings(argon2_memory_kib=4096)


async def test_passwords_are_compared_after_unicode_normalisation() -> None:
    passwords = Passwords(settings())
    composed, decomposed = "caf\u00e9 horse battery", "cafe\u0301 horse battery"
    hashed = await passwords.hash(composed)
    assert await passwords.verify(hashed, decomposed) == (True, None)
    passwords.close()


@pytest.mark.parametrize(
    "password", ["PASSWORD1", "\uff50\uff41\uff53\uff53\uff57\uff4f\uff52\uff44"]
)
def test_common_passwords_are_refused_in_upper_case_or_fullwidth(password: str) -> None:
    with pytest.raises(ValueError, match="too common"):
        check_password(password)


def test_the_hashing_pool_has_one_thread_per_usable_core() -> None:
    assert 1 <= cores() <= (os.cpu_count() or 1)


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread niceness is Linux's")
async def test_hashing_threads_run_below_the_event_loop_priority() -> None:
    passwords = Passwords(settings())
    try:
        loop = asyncio.get_running_loop()
        niceness = await loop.run_in_executor(passwords._pool, os.getpriority, os.PRIO_PROCESS, 0)
    finally:
        passwords.close()
    assert niceness > os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
