"""Validation of request bodies and the output format, without any server."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from verimail_api.schemas import CreateUserRequest, VerifyEmailRequest, parse, rfc3339
from verimail_shared.errors import InvalidArgument

VALID = {
    "username": "alice_1",
    "full_name": "Alice Liddell",
    "email": "alice@example.com",
    "password": "correct horse battery",
}


def violations(data: object) -> dict[str, str]:
    with pytest.raises(InvalidArgument) as caught:
        parse(CreateUserRequest, data)
    return {v.field: v.description for v in caught.value.violations}


def test_a_valid_body_parses() -> None:
    request = parse(CreateUserRequest, VALID)
    assert request.username == "alice_1"


@pytest.mark.parametrize("username", ["ab", "a" * 101, "Alice", "al-ice", "al ice", "ålice"])
def test_bad_usernames_are_rejected(username: str) -> None:
    assert "username" in violations({**VALID, "username": username})


@pytest.mark.parametrize("name", ["Zoë Ångström", "José María", "Ludwig van Beethoven", "李小龍"])
def test_full_names_may_use_any_letters(name: str) -> None:
    assert parse(CreateUserRequest, {**VALID, "full_name": name}).full_name == name


@pytest.mark.parametrize("name", ["R2-D2", "Al", "   ", "x" * 101, "Alice3"])
def test_bad_full_names_are_rejected(name: str) -> None:
    assert "full_name" in violations({**VALID, "full_name": name})


@pytest.mark.parametrize(
    "email", ["alice", "alice@", "@example.com", "a@b@c.com", "a" * 195 + "@x.com"]
)
def test_bad_emails_are_rejected(email: str) -> None:
    assert "email" in violations({**VALID, "email": email})


def test_email_domain_is_normalised() -> None:
    assert (
        parse(CreateUserRequest, {**VALID, "email": "Alice@EXAMPLE.com"}).email
        == "Alice@example.com"
    )


@pytest.mark.parametrize("password", ["1234567", "x" * 65])
def test_password_length_is_8_to_64(password: str) -> None:
    assert violations({**VALID, "password": password}) == {
        "password": "must contain from 8-64 characters"
    }


def test_passwords_need_no_composition_rules() -> None:
    assert parse(CreateUserRequest, {**VALID, "password": "aaaaaaaa"})


def test_every_bad_field_is_reported_together() -> None:
    assert set(violations({"username": 5, "fullName": "x"})) == {
        "username",
        "full_name",
        "email",
        "password",
    }


def test_missing_and_wrong_typed_fields_say_so() -> None:
    found = violations({"username": 5})
    assert found["username"] == "must be a string"
    assert found["email"] == "is required"


def test_camel_case_and_unknown_fields() -> None:
    body = {**VALID, "fullName": "Bob Builder", "extra": 1}
    del body["full_name"]
    assert parse(CreateUserRequest, body).full_name == "Bob Builder"


@pytest.mark.parametrize("body", [[], "text", 3, None])
def test_a_body_that_is_not_an_object_is_invalid(body: object) -> None:
    assert set(violations(body)) == {"body"}


def test_repr_never_shows_the_password() -> None:
    assert VALID["password"] not in repr(parse(CreateUserRequest, VALID))


def test_verify_query_accepts_both_spellings_from_strings() -> None:
    code = "c" * 43
    assert parse(VerifyEmailRequest, {"emailId": "7", "secretCode": code}).email_id == 7
    assert parse(VerifyEmailRequest, {"email_id": "7", "secret_code": code}).secret_code == code


@pytest.mark.parametrize("email_id", ["0", "-1", "x", str(2**63)])
def test_verify_query_rejects_bad_ids(email_id: str) -> None:
    with pytest.raises(InvalidArgument):
        parse(VerifyEmailRequest, {"email_id": email_id, "secret_code": "c" * 43})


def test_rfc3339_matches_protobuf_timestamps() -> None:
    assert rfc3339(datetime(1, 1, 1, tzinfo=UTC)) == "0001-01-01T00:00:00Z"
    assert rfc3339(datetime(2026, 11, 22, 8, 5, 3, 120000, tzinfo=UTC)) == "2026-11-22T08:05:03.12Z"


def test_length_and_bound_messages_name_the_fields_own_limits() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse(VerifyEmailRequest, {"email_id": "0", "secret_code": "short"})
    found = {v.field: v.description for v in caught.value.violations}
    assert found == {
        "email_id": f"must be an integer from 1 to {2**63 - 1}",
        "secret_code": "must contain from 32-128 characters",
    }


def test_a_username_outside_the_pattern_says_which_characters_are_allowed() -> None:
    assert violations({**VALID, "username": "Alice"}) == {
        "username": "must contain only lowercase letters, digits, or underscore"
    }
