"""Security headers on every response, and a Content-Security-Policy on every response.

JSON answers get the policy OWASP's REST Security cheat sheet gives APIs (nothing may load,
nothing may frame) and `Cache-Control: no-store`; the verification page sets its own, narrower
policy (pages.py), which is kept.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COMMON = {
    "X-Content-Type-Options": "nosniff",
    # The verification link carries its code in the query: never pass it on as a Referer.
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
}
# For any HTML that does not bring its own policy: nothing at all may load or run.
HTML_POLICY = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
API_POLICY = "default-src 'none'; frame-ancestors 'none'"


class SecurityHeadersMiddleware:
    # Pure ASGI, with the prologue every middleware here repeats (as Starlette's own do): a
    # base class for six lines would hide which scopes each one lets through untouched.
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in COMMON.items():
                    headers.setdefault(name, value)
                html = headers.get("content-type", "").startswith("text/html")
                headers.setdefault("Content-Security-Policy", HTML_POLICY if html else API_POLICY)
                # Answers are per request, and the verification URL carries its code.
                headers.setdefault("Cache-Control", "no-store")
            await send(message)

        await self.app(scope, receive, send_with_headers)
