"""HTTP endpoints: simplebank's gateway routes plus health and metrics."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qsl

import prometheus_client
import structlog
from sqlalchemy import text
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from verimail_api.middleware import current_request_id
from verimail_api.openapi import openapi
from verimail_api.pages import confirm_page, resend_page, verify_page, wants_html
from verimail_api.responses import JSONAnswer
from verimail_api.schemas import (
    CreateUserRequest,
    CreateUserResponse,
    Health,
    Readiness,
    ResendVerifyEmailRequest,
    ResendVerifyEmailResponse,
    User,
    VerifyEmailRequest,
    VerifyEmailResponse,
    parse,
)
from verimail_api.state import State
from verimail_shared.errors import FieldViolation, InvalidArgument, VerimailError
from verimail_shared.settings import Settings

log = structlog.get_logger(__name__)


class BodyTooLarge(InvalidArgument):
    """413: the body is larger than MAX_BODY_BYTES."""

    http_status = 413


class UnsupportedMediaType(InvalidArgument):
    """415: the body is declared as something that is not JSON."""

    http_status = 415


# JSON, and what clients of grpc-gateway send JSON as: nothing, or curl -d's form type.
FORM_TYPE = "application/x-www-form-urlencoded"
JSON_TYPES = {"", "application/json", FORM_TYPE}
MAX_FORM_FIELDS = 20


async def create_user(request: Request) -> Response:
    state: State = request.app.state.verimail
    await state.limits.hit("create_user", state.limits.client(request))
    data = await read_json(request, state.settings.max_body_bytes)
    body = parse(CreateUserRequest, data)
    user = await state.signup.create_user(body, current_request_id())
    return JSONAnswer(CreateUserResponse(user=User.model_validate(user)))


async def resend_verify_email(request: Request) -> Response:
    """Always the same answer, whether or not the address has an account (no enumeration).
    The expired-link page's form posts here too; a browser gets a page as the answer."""
    state: State = request.app.state.verimail
    html = wants_html(request)
    fields: Any = None
    try:
        await state.limits.hit("resend_ip", state.limits.client(request))
        fields = await read_fields(request, state.settings.max_body_bytes)
        body = parse(ResendVerifyEmailRequest, fields)
        await state.limits.hit("resend_email", body.email.lower())
    except VerimailError as exc:
        if not html:
            raise
        typed = fields.get("email") if isinstance(fields, dict) else None
        return resend_page(typed if isinstance(typed, str) else "", exc)
    # The lookup runs after the answer is sent: its timing cannot tell who has an account.
    task = BackgroundTask(_resend, state, body.email)
    if html:
        return resend_page(body.email, None, task)
    return JSONAnswer(ResendVerifyEmailResponse(), background=task)


async def _resend(state: State, email: str) -> None:
    try:
        job = await state.signup.resend_verify_email(email, current_request_id())
        await state.signup.dispatch(job)
    except Exception as exc:  # answered already; the user can ask again
        log.warning("verify_email_resend_failed", error=f"{type(exc).__name__}: {exc}")


async def verify_email(request: Request) -> Response:
    """GET: an API client uses the code, as simplebank's gateway does. A browser (a person, or a
    mail scanner fetching every link) gets a page whose button POSTs the code; HEAD never uses
    it either. POST, from that button (a form) or an API client (JSON), uses it (decision 060).
    """
    state: State = request.app.state.verimail
    if request.method == "POST":
        return await _use_code(request, await read_fields(request, state.settings.max_body_bytes))
    if request.method == "GET" and not wants_html(request):
        return await _use_code(request, dict(request.query_params))
    try:
        await state.limits.hit("verify_email", state.limits.client(request))
        query = parse(VerifyEmailRequest, dict(request.query_params))
        email = await state.signup.look_up_code(query.email_id, query.secret_code)
    except VerimailError as exc:
        return verify_page(exc)
    return confirm_page(query.email_id, query.secret_code, email)


async def _use_code(request: Request, fields: Any) -> Response:
    state: State = request.app.state.verimail
    html = wants_html(request)
    try:
        await state.limits.hit("verify_email", state.limits.client(request))
        body = parse(VerifyEmailRequest, fields)
        await state.signup.verify_email(body.email_id, body.secret_code)
    except VerimailError as exc:
        if not html:
            raise
        return verify_page(exc)
    return verify_page(None) if html else JSONAnswer(VerifyEmailResponse(is_verified=True))


async def healthz(request: Request) -> Response:
    return JSONAnswer(Health())


async def readyz(request: Request) -> Response:
    """Ready only while PostgreSQL and Redis both answer."""
    state: State = request.app.state.verimail
    timeout = state.settings.dependency_timeout_seconds
    checks: dict[str, str] = {}
    for name, probe in (("postgres", _ping_postgres(state)), ("redis", state.redis.ping())):
        try:
            await asyncio.wait_for(probe, timeout)
            checks[name] = "ok"
        except Exception as exc:  # a readiness probe reports any failure, it does not raise
            checks[name] = f"{type(exc).__name__}: {exc}"
    ready = all(value == "ok" for value in checks.values())
    answer = Readiness(status="ok" if ready else "unavailable", checks=checks)
    return JSONAnswer(answer, 200 if ready else 503)


async def metrics(request: Request) -> Response:
    return Response(
        prometheus_client.generate_latest(), media_type=prometheus_client.CONTENT_TYPE_LATEST
    )


async def _ping_postgres(state: State) -> None:
    async with state.engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


async def read_json(request: Request, limit: int) -> Any:
    """The body as JSON. Like grpc-gateway, a missing content type or curl's default form type
    is read as JSON too (decision 020); any other non-JSON type is refused with 415."""
    check_json_type(request)
    return _parse_json(await read_body(request, limit))


async def read_fields(request: Request, limit: int) -> Any:
    """The body as JSON, or as an HTML form's fields: a body under the form type that does not
    start like a JSON object or array is an HTML form's (decision 060)."""
    check_json_type(request)
    raw = await read_body(request, limit)
    if _media_type(request) != FORM_TYPE or raw.lstrip()[:1] in (b"{", b"["):
        return _parse_json(raw)
    text = raw.decode("utf-8", errors="replace")
    try:
        return dict(parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS))
    except ValueError:  # more fields than any of our forms has
        raise InvalidArgument([FieldViolation("body", "has too many fields")]) from None


def check_json_type(request: Request) -> None:
    media_type = _media_type(request)
    if media_type not in JSON_TYPES and not media_type.endswith("+json"):
        raise UnsupportedMediaType([FieldViolation("content-type", "must be application/json")])


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 once it is longer than `limit`."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge([FieldViolation("body", f"must be at most {limit} bytes")])
    chunks = bytearray()
    async for chunk in request.stream():
        chunks += chunk
        if len(chunks) > limit:
            raise BodyTooLarge([FieldViolation("body", f"must be at most {limit} bytes")])
    return bytes(chunks)


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidArgument([FieldViolation("body", "must be valid JSON")]) from None


def routes(settings: Settings) -> list[Route]:
    result = [
        Route("/v1/create_user", create_user, methods=["POST"]),
        Route("/v1/verify_email", verify_email, methods=["GET", "POST"]),
        Route("/v1/resend_verify_email", resend_verify_email, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    if settings.api_metrics_port is None:  # else served on its own port by `verimail-api`
        result.append(Route("/metrics", metrics, methods=["GET"]))
    return result
