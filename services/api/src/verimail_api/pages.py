"""The small HTML page a browser sees after following the verification link."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from verimail_api.errors import HTTP_STATUS, grpc_code
from verimail_api.signup import CodeAlreadyUsed, CodeExpired
from verimail_shared.errors import NotFound, ResourceExhausted, VerimailError

_templates = Environment(
    loader=PackageLoader("verimail_api", "templates"), autoescape=select_autoescape(["html"])
)


@dataclass(frozen=True)
class Outcome:
    title: str
    message: str
    ok: bool = False


VERIFIED = Outcome("Email verified", "Thank you: your email address is now verified.", ok=True)
OUTCOMES: dict[type[VerimailError], Outcome] = {
    CodeAlreadyUsed: Outcome(
        "Link already used",
        "This link was used before. Your email "
        "address was verified then; there is nothing more to do.",
    ),
    CodeExpired: Outcome(
        "Link expired", "This link has expired. Sign in and ask for a new verification email."
    ),
    ResourceExhausted: Outcome(
        "Too many attempts",
        "Too many verification attempts came from "
        "your network. Wait a minute and open the link again.",
    ),
    NotFound: Outcome(
        "Link not valid",
        "This verification link is not valid. Check that you copied the whole link from the email.",
    ),
}
INVALID = OUTCOMES[NotFound]


def _style_hash() -> str:
    """The CSP hash of the page's one inline <style>, so that the CSP can allow it alone."""
    source, _, _ = _templates.loader.get_source(_templates, "verify_email.html")  # type: ignore[union-attr]
    match = re.search(r"<style>(.*?)</style>", source, re.DOTALL)
    style = match.group(1) if match else ""
    return "sha256-" + base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()


# Nothing but the inline style may load or run; no forms, no framing, no <base>.
PAGE_CSP = (
    f"default-src 'none'; style-src '{_style_hash()}'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)


def wants_html(request: Request) -> bool:
    """A browser following the link asks for HTML first; API clients do not."""
    accept = request.headers.get("accept", "")
    return "text/html" in accept and "application/json" not in accept.split(",")[0]


def verify_page(error: VerimailError | None) -> HTMLResponse:
    if error is None:
        return _render(VERIFIED, 200)
    outcome = next((o for kind, o in OUTCOMES.items() if isinstance(error, kind)), INVALID)
    response = _render(outcome, HTTP_STATUS[grpc_code(error)])
    if isinstance(error, ResourceExhausted):
        response.headers["Retry-After"] = str(error.retry_after)
    return response


def _render(outcome: Outcome, status: int) -> HTMLResponse:
    html = _templates.get_template("verify_email.html").render(
        title=outcome.title, message=outcome.message, ok=outcome.ok
    )
    return HTMLResponse(html, status, headers={"Content-Security-Policy": PAGE_CSP})
