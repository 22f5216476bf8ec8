"""Mapping errors to google.rpc.Status JSON and HTTP status codes."""

from __future__ import annotations

import json

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import DBAPIError, OperationalError

from verimail_api.errors import error_response
from verimail_api.signup import CodeAlreadyUsed, CodeExpired
from verimail_shared.errors import (
    AlreadyExists,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unavailable,
)


def body(exc: Exception) -> tuple[int, dict[str, object]]:
    response = error_response(exc)
    return response.status_code, json.loads(bytes(response.body))


def test_invalid_argument_is_400_with_a_bad_request_detail() -> None:
    status, content = body(
        InvalidArgument(
            [FieldViolation("email", "is required"), FieldViolation("password", "too short")]
        )
    )
    assert status == 400
    assert content["code"] == 3
    assert content["details"] == [
        {
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "field_violations": [
                {"field": "email", "description": "is required"},
                {"field": "password", "description": "too short"},
            ],
        }
    ]


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (AlreadyExists("username already exists"), 409, 6),
        (NotFound("verification not found"), 404, 5),
        (CodeAlreadyUsed("used"), 400, 9),
        (CodeExpired("expired"), 400, 9),
        (Unavailable("down"), 503, 14),
    ],
)
def test_domain_errors_map_to_grpc_gateway_codes(error: Exception, status: int, code: int) -> None:
    assert body(error)[0] == status
    assert body(error)[1]["code"] == code


@pytest.mark.parametrize(
    "error",
    [
        RedisConnectionError("refused"),
        ConnectionRefusedError("refused"),
        TimeoutError(),
        OperationalError("SELECT 1", {}, Exception("server closed the connection")),
    ],
)
def test_a_dependency_that_is_down_is_503_unavailable(error: Exception) -> None:
    assert body(error) == (
        503,
        {"code": 14, "message": "a dependency is unavailable, try again later", "details": []},
    )


class PostgresError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(sqlstate)
        self.sqlstate = sqlstate


@pytest.mark.parametrize("sqlstate", ["57P03", "57P01", "08006"])
def test_a_postgresql_starting_up_or_shutting_down_is_503_unavailable(sqlstate: str) -> None:
    """asyncpg's "the database system is starting up" reaches the API as a bare DBAPIError."""
    error = DBAPIError("connect", None, PostgresError(sqlstate))
    assert body(error)[0] == 503


def test_a_postgresql_error_of_the_request_itself_is_not_503() -> None:
    assert body(DBAPIError("INSERT", None, PostgresError("22P02")))[0] == 500


def test_a_bug_is_a_500_that_does_not_leak_its_message() -> None:
    status, content = body(KeyError("secret internals"))
    assert status == 500
    assert "secret" not in json.dumps(content)
