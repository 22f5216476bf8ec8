"""Rendering and sending the verification email over SMTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import formatdate, parseaddr
from urllib.parse import urlencode

import aiosmtplib
from jinja2 import Environment, PackageLoader, select_autoescape

from verimail_shared.settings import Settings, SmtpTls

_templates = Environment(
    loader=PackageLoader("verimail_worker", "templates"),
    autoescape=select_autoescape(["html"]),
    keep_trailing_newline=True,
)


@dataclass(frozen=True)
class VerifyEmailLetter:
    """What the verification email says, and to whom."""

    to: str
    full_name: str
    email_id: int
    secret_code: str
    expires_at: datetime
    job_id: str


def verify_link(base_url: str, email_id: int, secret_code: str) -> str:
    query = urlencode({"email_id": email_id, "secret_code": secret_code})
    return f"{base_url.rstrip('/')}/v1/verify_email?{query}"


def render(letter: VerifyEmailLetter, settings: Settings) -> EmailMessage:
    link = verify_link(settings.public_base_url, letter.email_id, letter.secret_code)
    fields = {
        "full_name": letter.full_name,
        "link": link,
        "expires_at": f"{letter.expires_at:%Y-%m-%d %H:%M} UTC",
    }
    message = EmailMessage()
    message["From"] = settings.email_sender
    message["To"] = letter.to
    message["Subject"] = "Verify your email address"
    message["Date"] = formatdate(localtime=False)
    # One Message-ID per job: a re-sent copy of the same job is recognisably the same email.
    message["Message-ID"] = f"<verify-{letter.job_id}@{_sender_domain(settings)}>"
    message.set_content(_templates.get_template("verify_email.txt").render(fields))
    message.add_alternative(
        _templates.get_template("verify_email.html").render(fields), subtype="html"
    )
    return message


def _sender_domain(settings: Settings) -> str:
    address = parseaddr(settings.email_sender)[1]
    return Address(addr_spec=address).domain if "@" in address else "verimail.invalid"


class Mailer:
    """SMTP connections to the configured server; every command has a timeout."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[aiosmtplib.SMTP]:
        """A logged-in connection; QUIT when the block ends (an error there changes nothing)."""
        s = self.settings
        smtp = aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_username,
            password=s.smtp_password.get_secret_value() if s.smtp_password else None,
            use_tls=s.smtp_tls is SmtpTls.TLS,
            start_tls=s.smtp_tls is SmtpTls.STARTTLS,
            timeout=s.smtp_timeout_seconds,
        )
        await smtp.connect()
        try:
            yield smtp
        finally:
            try:
                await smtp.quit()
            except aiosmtplib.SMTPException:
                smtp.close()
