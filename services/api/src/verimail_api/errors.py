"""One place that turns errors into google.rpc.Status JSON, as grpc-gateway writes it."""

from __future__ import annotations

from collections.abc import Mapping

import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException
from starlette.requests import Request

from verimail_api.responses import JSONAnswer
from verimail_api.schemas import BadRequest, BadRequestFieldViolation, Status
from verimail_shared.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    VerimailError,
)

log = structlog.get_logger(__name__)

# gRPC status codes (google.rpc.Code) and the HTTP status grpc-gateway gives each.
INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, RESOURCE_EXHAUSTED, FAILED_PRECONDITION = 3, 5, 6, 8, 9
UNIMPLEMENTED, INTERNAL, UNAVAILABLE, UNAUTHENTICATED = 12, 13, 14, 16
HTTP_STATUS = {
    INVALID_ARGUMENT: 400,
    NOT_FOUND: 404,
    ALREADY_EXISTS: 409,
    FAILED_PRECONDITION: 400,
    RESOURCE_EXHAUSTED: 429,
    UNIMPLEMENTED: 501,
    INTERNAL: 500,
    UNAVAILABLE: 503,
    UNAUTHENTICATED: 401,
}
GRPC_CODE: dict[type[VerimailError], int] = {
    InvalidArgument: INVALID_ARGUMENT,
    NotFound: NOT_FOUND,
    AlreadyExists: ALREADY_EXISTS,
    FailedPrecondition: FAILED_PRECONDITION,
    Unavailable: UNAVAILABLE,
    Unauthenticated: UNAUTHENTICATED,
    ResourceExhausted: RESOURCE_EXHAUSTED,
}
HTTP_TO_GRPC = {
    400: INVALID_ARGUMENT,
    404: NOT_FOUND,
    405: UNIMPLEMENTED,
    413: INVALID_ARGUMENT,
    415: INVALID_ARGUMENT,
}

# What a dependency that is down or slow raises, from each client library.
DEPENDENCY_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    RedisConnectionError,
    RedisTimeoutError,
    OperationalError,
    PoolTimeoutError,
)


def status_response(
    code: int,
    message: str,
    details: list[BadRequest] | None = None,
    http_status: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONAnswer:
    status = Status(code=code, message=message, details=details or [])
    return JSONAnswer(status, http_status or HTTP_STATUS[code], headers)


def grpc_code(exc: VerimailError) -> int:
    for kind in type(exc).__mro__:
        if kind in GRPC_CODE:
            return GRPC_CODE[kind]
    return INTERNAL


def error_response(exc: Exception) -> JSONAnswer:
    """The response for any exception a handler let escape."""
    if isinstance(exc, InvalidArgument):
        violations = [
            BadRequestFieldViolation(field=v.field, description=v.description)
            for v in exc.violations
        ]
        # 400, or the HTTP status of a problem with the request's size (413, 414, 415, 431).
        http_status = getattr(exc, "http_status", None)
        detail = BadRequest(field_violations=violations)
        return status_response(INVALID_ARGUMENT, str(exc), [detail], http_status)
    if isinstance(exc, Unauthenticated):
        return status_response(UNAUTHENTICATED, str(exc), headers={"WWW-Authenticate": "Bearer"})
    if isinstance(exc, ResourceExhausted):
        return status_response(
            RESOURCE_EXHAUSTED, str(exc), headers={"Retry-After": str(exc.retry_after)}
        )
    if isinstance(exc, VerimailError):
        return status_response(grpc_code(exc), str(exc))
    if is_dependency_error(exc):
        log.warning("dependency_unavailable", error=f"{type(exc).__name__}: {exc}")
        return status_response(UNAVAILABLE, "a dependency is unavailable, try again later")
    log.exception("unhandled_error")
    return status_response(INTERNAL, "internal error")


# SQLSTATE classes of a PostgreSQL that cannot serve now: connection exceptions (08) and
# operator intervention (57: shutting down, crashed, still starting up).
UNAVAILABLE_SQLSTATE_CLASSES = ("08", "57")


def is_dependency_error(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        sqlstate = getattr(exc.orig, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate[:2] in UNAVAILABLE_SQLSTATE_CLASSES:
            return True
    return isinstance(exc, DEPENDENCY_ERRORS)


async def handle_exception(request: Request, exc: Exception) -> JSONAnswer:
    return error_response(exc)


async def handle_http_exception(request: Request, exc: Exception) -> JSONAnswer:
    if not isinstance(exc, HTTPException):
        return error_response(exc)
    code = HTTP_TO_GRPC.get(
        exc.status_code, INTERNAL if exc.status_code >= 500 else INVALID_ARGUMENT
    )
    # A 405 keeps the Allow header Starlette's router sets (RFC 9110 15.5.6).
    return status_response(code, str(exc.detail), http_status=exc.status_code, headers=exc.headers)
