"""How much of a request's head the API reads, and the answer (in the error shape) beyond it.

The same limits as common front proxies (nginx's 8 KiB request line; 16 KiB of headers, h11's
default for the whole head). The server keeps a little more than these (server.py), so that it
is always this check that answers, never the HTTP parser's plain-text 400.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from verimail_api.errors import error_response
from verimail_shared.errors import FieldViolation, InvalidArgument

MAX_URL_BYTES = 8 * 1024  # path and query string
MAX_HEADER_BYTES = 16 * 1024  # every header's name and value


class UriTooLong(InvalidArgument):
    http_status = 414


class HeadersTooLarge(InvalidArgument):
    http_status = 431


def url_bytes(scope: Scope) -> int:
    path = scope.get("raw_path") or scope["path"].encode()
    return len(path) + len(scope["query_string"])


def header_bytes(scope: Scope) -> int:
    return sum(len(name) + len(value) for name, value in scope["headers"])


class RequestLimitsMiddleware:
    """Refuses a URL over MAX_URL_BYTES with 414 and headers over MAX_HEADER_BYTES with 431."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if url_bytes(scope) > MAX_URL_BYTES:
                problem: InvalidArgument = UriTooLong(
                    [FieldViolation("url", f"must be at most {MAX_URL_BYTES} bytes")]
                )
                await error_response(problem)(scope, receive, send)
                return
            if header_bytes(scope) > MAX_HEADER_BYTES:
                problem = HeadersTooLarge(
                    [FieldViolation("headers", f"must be at most {MAX_HEADER_BYTES} bytes")]
                )
                await error_response(problem)(scope, receive, send)
                return
        await self.app(scope, receive, send)
