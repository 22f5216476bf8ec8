"""HTTP hygiene on every response: security headers, and a cap on the query string.

Headers follow OWASP's Secure Headers and REST Security cheat sheets: JSON answers get a CSP
that allows nothing; the HTML page sets its own, narrower one (pages.py). `Referrer-Policy:
no-referrer` and `Cache-Control: no-store` keep the verification link, code included, out of
other sites' logs and out of caches.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from verimail_api.errors import INVALID_ARGUMENT, status_response

MAX_QUERY_BYTES = 4096  # the verification link's query is about 80 bytes
API_CSP = "default-src 'none'; frame-ancestors 'none'"
HSTS = "max-age=63072000; includeSubDomains"


class SecurityHeadersMiddleware:
    """Adds the security headers a response lacks; answers 414 to an oversized query string."""

    def __init__(self, app: ASGIApp, *, https: bool = False) -> None:
        self.app = app
        self.defaults = {
            "x-content-type-options": "nosniff",
            "referrer-policy": "no-referrer",
            "x-frame-options": "DENY",
            "content-security-policy": API_CSP,
            "cache-control": "no-store",
            "cross-origin-opener-policy": "same-origin",
        }
        if https:
            self.defaults["strict-transport-security"] = HSTS

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.defaults.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        if len(scope.get("query_string", b"")) > MAX_QUERY_BYTES:
            response = status_response(
                INVALID_ARGUMENT,
                f"query string longer than {MAX_QUERY_BYTES} bytes",
                http_status=414,
            )
            await response(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)
