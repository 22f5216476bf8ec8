"""The HTML pages a person sees: after following the verification link, after pressing its
button, and after asking for a new email (decision 060)."""

from __future__ import annotations

import base64
import hashlib
import math
import re
from dataclasses import dataclass

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import HTMLResponse

from verimail_api.errors import HTTP_STATUS, grpc_code
from verimail_api.signup import CodeAlreadyUsed, CodeExpired
from verimail_shared.errors import InvalidArgument, NotFound, ResourceExhausted, VerimailError

TEMPLATE = "verify_email.html"
_templates = Environment(
    loader=PackageLoader("verimail_api", "templates"), autoescape=select_autoescape(["html"])
)


@dataclass(frozen=True)
class Confirm:
    """The button that uses the code: a POST, so that fetching the link uses nothing."""

    email_id: int
    secret_code: str


@dataclass(frozen=True)
class Resend:
    """The form that asks for a new verification email."""

    email: str = ""
    error: str = ""


@dataclass(frozen=True)
class Outcome:
    title: str
    message: str
    tone: str = "problem"  # the heading's class: "ok", "problem", or "" for neither


CONFIRM = Outcome("Confirm your email address", "Press the button to verify {email}.", tone="")
VERIFIED = Outcome("Email verified", "Thank you: your email address is now verified.", tone="ok")
SENT = Outcome(
    "Check your inbox",
    "If {email} belongs to an account that is waiting for verification, a new email with a "
    "new link is on its way. Only the newest link works.",
    tone="ok",
)
RESEND_INVALID = Outcome(
    "Send a new verification email", "Enter the email address you signed up with."
)
OUTCOMES: dict[type[VerimailError], Outcome] = {
    CodeAlreadyUsed: Outcome(
        "Link already used",
        "This link was used before. Your email "
        "address was verified then; there is nothing more to do.",
    ),
    CodeExpired: Outcome(
        "Link expired",
        "This link has expired. We can send you a new one: check the address and press the button.",
    ),
    ResourceExhausted: Outcome(
        "Too many attempts",
        "There have been too many attempts. Wait {wait} and try again.",
    ),
    NotFound: Outcome(
        "Link not valid",
        "This verification link is not valid. Check that you copied the whole link from the email.",
    ),
}
INVALID = OUTCOMES[NotFound]


def _style_hash() -> str:
    """The CSP hash of the page's one inline <style>, so that the CSP can allow it alone."""
    source, _, _ = _templates.loader.get_source(_templates, TEMPLATE)  # type: ignore[union-attr]
    match = re.search(r"<style>(.*?)</style>", source, re.DOTALL)
    style = match.group(1) if match else ""
    return "sha256-" + base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()


# Nothing but the inline style may load or run, forms post only to this origin, no framing
# (the button cannot be clickjacked), no <base>.
PAGE_CSP = (
    f"default-src 'none'; style-src '{_style_hash()}'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


def wants_html(request: Request) -> bool:
    """A browser following the link asks for HTML first; API clients do not."""
    accept = request.headers.get("accept", "")
    return "text/html" in accept and "application/json" not in accept.split(",")[0]


def confirm_page(email_id: int, secret_code: str, email: str) -> HTMLResponse:
    """What the link shows: the address, and the button that verifies it."""
    return _render(CONFIRM, 200, email=email, confirm=Confirm(email_id, secret_code))


def verify_page(error: VerimailError | None) -> HTMLResponse:
    """The answer to the button (None: verified), or why the link cannot be used."""
    if error is None:
        return _render(VERIFIED, 200)
    if isinstance(error, InvalidArgument):  # a mangled link is as good as an unknown one
        error = NotFound(str(error))
    if isinstance(error, CodeExpired):
        return _render(OUTCOMES[CodeExpired], 400, resend=Resend(error.email))
    return _problem(error)


def resend_page(
    email: str, error: VerimailError | None, background: BackgroundTask | None = None
) -> HTMLResponse:
    """The answer to the new-email form: the same whoever owns `email` (decision 022)."""
    if error is None:
        return _render(SENT, 200, background, email=email)
    if isinstance(error, InvalidArgument):
        resend = Resend(email, "Enter an email address such as name@example.com.")
        return _render(RESEND_INVALID, 400, resend=resend)
    return _problem(error)


def _problem(error: VerimailError) -> HTMLResponse:
    outcome = next((o for kind, o in OUTCOMES.items() if isinstance(error, kind)), INVALID)
    status = HTTP_STATUS[grpc_code(error)]
    if not isinstance(error, ResourceExhausted):
        return _render(outcome, status)
    response = _render(outcome, status, wait=_wait(error.retry_after))
    response.headers["Retry-After"] = str(error.retry_after)
    return response


def _wait(seconds: int) -> str:
    if seconds < 90:
        return "a minute"
    return f"{math.ceil(seconds / 60)} minutes"


def _render(
    outcome: Outcome,
    status: int,
    background: BackgroundTask | None = None,
    *,
    email: str = "",
    wait: str = "",
    confirm: Confirm | None = None,
    resend: Resend | None = None,
) -> HTMLResponse:
    html = _templates.get_template(TEMPLATE).render(
        title=outcome.title,
        message=outcome.message.format(email=email, wait=wait),
        tone=outcome.tone,
        confirm=confirm,
        resend=resend,
    )
    return HTMLResponse(
        html, status, headers={"Content-Security-Policy": PAGE_CSP}, background=background
    )
