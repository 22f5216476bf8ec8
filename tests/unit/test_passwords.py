"""argon2id hashing and checking, the common-password list, rehashing on new parameters."""

from __future__ import annotations

import pytest

from verimail_api.passwords import Passwords, common_passwords, is_common
from verimail_shared.settings import Settings


def make_passwords(**overrides: object) -> Passwords:
    return Passwords(Settings(_env_file=None, **overrides))  # type: ignore[arg-type]


def test_the_list_holds_the_10000_most_common_passwords() -> None:
    listed = common_passwords()
    assert len(listed) == 10_000
    assert {"password", "123456", "qwerty", "iloveyou"} <= listed


@pytest.mark.parametrize(
    "password",
    [
        "password",
        "Password",
        "PASSWORD1",
        "iloveyou",
        "\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18",  # fullwidth 12345678
    ],
)
def test_common_passwords_are_recognised_whatever_their_case_or_width(password: str) -> None:
    assert is_common(password)


@pytest.mark.parametrize("password", ["correct horse battery", "Tr0ub4dor&3-staple"])
def test_uncommon_passwords_pass(password: str) -> None:
    assert not is_common(password)


async def test_hashes_are_argon2id_with_the_configured_parameters() -> None:
    passwords = make_passwords(argon2_time_cost=3, argon2_memory_kib=20480)
    try:
        hashed = await passwords.hash("correct horse battery")
    finally:
        passwords.close()
    assert hashed.startswith("$argon2id$v=19$m=20480,t=3,p=1$")
    assert "correct horse battery" not in hashed


async def test_check_accepts_the_password_and_refuses_others() -> None:
    passwords = make_passwords()
    try:
        hashed = await passwords.hash("correct horse battery")
        assert (await passwords.check(hashed, "correct horse battery")).ok
        assert not (await passwords.check(hashed, "correct horse battery ")).ok
        assert not (await passwords.check("not a hash", "correct horse battery")).ok
    finally:
        passwords.close()


async def test_unicode_forms_of_one_password_match() -> None:
    passwords = make_passwords()
    try:
        hashed = await passwords.hash("caf\u00e9 au lait!")  # é precomposed
        assert (await passwords.check(hashed, "cafe\u0301 au lait!")).ok  # e + combining accent
    finally:
        passwords.close()


async def test_a_hash_with_old_parameters_is_replaced_at_the_next_successful_check() -> None:
    old, new = make_passwords(), make_passwords(argon2_time_cost=3)
    try:
        hashed = await old.hash("correct horse battery")
        assert (await old.check(hashed, "correct horse battery")).new_hash is None
        checked = await new.check(hashed, "correct horse battery")
        assert checked.ok
        assert checked.new_hash is not None
        assert checked.new_hash.startswith("$argon2id$v=19$m=19456,t=3,p=1$")
        assert (await new.check(checked.new_hash, "correct horse battery")).new_hash is None
        assert (await new.check(hashed, "wrong password")).new_hash is None  # only on success
    finally:
        old.close()
        new.close()


def test_parameters_below_owasp_minimums_are_refused() -> None:
    with pytest.raises(ValueError, match="argon2"):
        Settings(_env_file=None, argon2_memory_kib=4096)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="argon2"):
        Settings(_env_file=None, argon2_time_cost=1)  # type: ignore[call-arg]
