"""Property tests (Hypothesis): the validators and the error mapping hold for any input."""

from __future__ import annotations

import json
import re
import string
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from verimail_api.errors import (
    GRPC_CODE,
    HTTP_STATUS,
    error_response,
    grpc_code,
)
from verimail_api.schemas import (
    USERNAME,
    CreateUserRequest,
    ResendVerifyEmailRequest,
    VerifyEmailRequest,
    check_password,
    check_username,
    parse,
)
from verimail_shared.errors import (
    FieldViolation,
    InvalidArgument,
    ResourceExhausted,
    VerimailError,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    [
        "username",
        "full_name",
        "fullName",
        "email",
        "password",
        "email_id",
        "emailId",
        "secret_code",
        "secretCode",
        "other",
    ]
)
bodies = st.dictionaries(field_names, json_values, max_size=6) | json_values
MODELS = [CreateUserRequest, ResendVerifyEmailRequest, VerifyEmailRequest]


@given(bodies, st.sampled_from(MODELS))
def test_parse_accepts_or_raises_invalid_argument_naming_real_fields(
    data: Any, model: type[Any]
) -> None:
    try:
        parse(model, data)
    except InvalidArgument as exc:
        known = {name for name in model.model_fields} | {"body"}
        assert exc.violations
        assert {v.field for v in exc.violations} <= known


@given(st.text(max_size=120))
def test_usernames_are_accepted_exactly_when_they_match_the_rule(value: str) -> None:
    valid = 3 <= len(value) <= 100 and USERNAME.fullmatch(value) is not None
    try:
        check_username(value)
        accepted = True
    except ValueError:
        accepted = False
    assert accepted == valid


@given(st.text(min_size=0, max_size=80))
def test_a_refused_password_never_appears_in_the_error(value: str) -> None:
    try:
        check_password(value)
    except ValueError as exc:
        if len(value) >= 4:
            assert value not in str(exc)
        return
    assert 8 <= len(value) <= 64


@given(st.text(alphabet=string.ascii_letters + string.digits + " _-", min_size=7, max_size=63))
def test_create_user_violations_never_echo_the_password(tail: str) -> None:
    password = "~" + tail  # "~" appears in no message, so a match can only be an echo
    body = {"username": "x", "full_name": "1", "email": "no", "password": password}
    try:
        parse(CreateUserRequest, body)
    except InvalidArgument as exc:
        text = json.dumps(error_response(exc).body.decode())
        assert password not in text


errors = st.one_of(
    st.builds(
        InvalidArgument,
        st.lists(
            st.builds(FieldViolation, st.text(max_size=10), st.text(max_size=30)),
            min_size=1,
            max_size=3,
        ),
    ),
    st.builds(ResourceExhausted, st.text(max_size=30), st.integers(1, 86400)),
    *(
        st.builds(kind, st.text(max_size=30))
        for kind in GRPC_CODE
        if kind not in {InvalidArgument, ResourceExhausted}
    ),
)


@given(errors)
def test_every_error_maps_to_a_status_body_with_matching_http_status(exc: VerimailError) -> None:
    response = error_response(exc)
    body = json.loads(bytes(response.body))
    assert set(body) == {"code", "message", "details"}
    assert body["code"] == grpc_code(exc)
    assert response.status_code == HTTP_STATUS[body["code"]]
    assert 400 <= response.status_code < 500 or body["code"] == 14
    if isinstance(exc, InvalidArgument):
        (detail,) = body["details"]
        assert detail["@type"] == "type.googleapis.com/google.rpc.BadRequest"
        assert len(detail["field_violations"]) == len(exc.violations)
    if isinstance(exc, ResourceExhausted):
        assert response.headers["retry-after"] == str(exc.retry_after)
        assert re.fullmatch(r"[0-9]+", response.headers["retry-after"])
