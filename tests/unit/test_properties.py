"""Property tests: whatever arrives, validation answers with field violations, never a crash,
and the error mapping always produces a well-formed google.rpc.Status."""

from __future__ import annotations

import json
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from verimail_api.errors import HTTP_STATUS, error_response
from verimail_api.schemas import (
    CreateUserRequest,
    VerifyEmailRequest,
    check_username,
    parse,
)
from verimail_shared.errors import (
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

FIELDS = {"username", "full_name", "email", "password"}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=500, derandomize=True)
@given(st.dictionaries(st.sampled_from([*FIELDS, "fullName", "other"]), json_values) | json_values)
def test_any_json_body_either_parses_or_names_the_bad_fields(data: object) -> None:
    try:
        request = parse(CreateUserRequest, data)
    except InvalidArgument as exc:
        assert exc.violations
        assert {v.field for v in exc.violations} <= FIELDS | {"body"}
        assert all(v.description for v in exc.violations)
    else:
        assert 3 <= len(request.username) <= 100 and 8 <= len(request.password) <= 64


@settings(max_examples=300, derandomize=True)
@given(st.text(alphabet=string.ascii_lowercase + string.digits + "_", min_size=3, max_size=100))
def test_every_well_formed_username_is_accepted(username: str) -> None:
    assert check_username(username) == username


@settings(max_examples=300, derandomize=True)
@given(
    st.text(min_size=1, max_size=200).filter(
        lambda s: not set(s) <= set(string.ascii_lowercase + string.digits + "_")
    )
)
def test_a_username_with_any_other_character_is_refused(username: str) -> None:
    try:
        check_username(username)
    except ValueError:
        return
    raise AssertionError(f"{username!r} was accepted")


@settings(max_examples=300, derandomize=True)
@given(st.dictionaries(st.sampled_from(["email_id", "emailId", "secret_code", "x"]), st.text()))
def test_any_query_either_parses_or_is_invalid_argument(query: dict[str, str]) -> None:
    try:
        parsed = parse(VerifyEmailRequest, query)
    except InvalidArgument as exc:
        assert exc.violations
    else:
        assert parsed.email_id > 0 and 32 <= len(parsed.secret_code) <= 128


errors = st.one_of(
    st.builds(
        InvalidArgument, st.lists(st.builds(FieldViolation, st.text(), st.text()), min_size=1)
    ),
    st.builds(AlreadyExists, st.text()),
    st.builds(NotFound, st.text()),
    st.builds(FailedPrecondition, st.text()),
    st.builds(Unavailable, st.text()),
    st.builds(Unauthenticated, st.text()),
    st.builds(ResourceExhausted, st.text(), st.integers(1, 86400)),
    st.builds(ConnectionRefusedError),
    st.builds(RuntimeError, st.text()),
)


@settings(max_examples=300, derandomize=True)
@given(errors)
def test_every_error_maps_to_a_status_body_and_its_grpc_gateway_http_code(exc: Exception) -> None:
    response = error_response(exc)
    body = json.loads(bytes(response.body))
    assert set(body) == {"code", "message", "details"}
    assert response.status_code == HTTP_STATUS[body["code"]]
    if isinstance(exc, ResourceExhausted):
        assert response.headers["retry-after"] == str(exc.retry_after)
    if isinstance(exc, RuntimeError):
        assert response.status_code == 500 and body["message"] == "internal error"
