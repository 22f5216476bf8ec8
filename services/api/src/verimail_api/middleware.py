"""Per-request context: a request id for the logs and the job, an access log line, metrics."""

from __future__ import annotations

import re
import time
import uuid
from ipaddress import IPv4Network, IPv6Network

import structlog
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from verimail_api.errors import error_response
from verimail_api.metrics import REQUEST_DURATION, REQUESTS
from verimail_api.ratelimit import is_trusted

log = structlog.get_logger("verimail_api.access")
REQUEST_ID_HEADER = b"x-request-id"
_VALID_REQUEST_ID = re.compile(rb"[A-Za-z0-9._\-]{1,64}")


class RequestContextMiddleware:
    """Binds `request_id` to every log line of a request and echoes it in `X-Request-ID`.

    Each request ends in one INFO line, `request`, which also carries what its handler bound
    with `structlog.contextvars` (a signup's `username` and `job_id`): one line per outcome.
    """

    # The pure-ASGI prologue, repeated in each middleware on purpose (see headers.py).
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        route = _route_template(scope)
        outer = structlog.contextvars.get_contextvars().keys()
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"].append((REQUEST_ID_HEADER, request_id.encode()))
            await send(message)

        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                elapsed = time.perf_counter() - started
                method = scope["method"]
                REQUESTS.labels(method, route, str(status)).inc()
                REQUEST_DURATION.labels(method, route).observe(elapsed)
                log.info(
                    "request",
                    method=method,
                    route=route,
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                )
                # What the handler bound was for this line; it goes no further.
                added = structlog.contextvars.get_contextvars().keys() - outer - {"request_id"}
                structlog.contextvars.unbind_contextvars(*added)


class UnexpectedErrorMiddleware:
    """Answers an exception no handler took with the 500 in the error shape, inside the other
    middleware, so that it carries the request id and the security headers like every answer.
    (Starlette's own handler for `Exception` sits outside all middleware.)"""

    # The pure-ASGI prologue, repeated in each middleware on purpose (see headers.py).
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as exc:
            if started:  # too late for another answer: let the server close the connection
                raise
            await error_response(exc)(scope, receive, send)


def current_request_id() -> str | None:
    value = structlog.contextvars.get_contextvars().get("request_id")
    return str(value) if value else None


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER and _VALID_REQUEST_ID.fullmatch(value):
            return bytes(value).decode()
    return uuid.uuid4().hex


def _route_template(scope: Scope) -> str:
    # Label by template, not by path: paths are unbounded, templates are not.
    for route in scope["app"].routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return str(getattr(route, "path", "unmatched"))
    return "unmatched"


class ForwardedSchemeMiddleware:
    """A trusted proxy's `X-Forwarded-Proto` becomes the request's scheme, so that behind a
    TLS-terminating proxy cookies are Secure and absolute redirects stay on https. From any
    other peer the header is ignored: a client cannot forge it."""

    def __init__(self, app: ASGIApp, trusted: list[IPv4Network | IPv6Network]) -> None:
        self.app = app
        self.trusted = trusted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if scope["type"] == "http" and client and is_trusted(client[0], self.trusted):
            for name, value in scope["headers"]:
                if name == b"x-forwarded-proto" and value in (b"http", b"https"):
                    scope = {**scope, "scheme": value.decode()}
                    break
        await self.app(scope, receive, send)
