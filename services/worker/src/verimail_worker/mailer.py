"""Rendering and sending the verification email over SMTP."""

from __future__ import annotations

import asyncio
import email.policy
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.utils import formatdate
from urllib.parse import urlencode

import aiosmtplib
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from aiosmtplib.typing import Default, SMTPStatus
from jinja2 import Environment, PackageLoader, select_autoescape

from verimail_shared.messages import verify_message_id
from verimail_shared.settings import Settings, SmtpTls

# Many servers limit the messages per connection (often to 100) and answer 421 past it.
MAX_MESSAGES_PER_CONNECTION = 100
IDLE_CHECK_SECONDS = 30.0


class _HeaderClasses(HeaderRegistry):
    """The standard header classes, each made once: HeaderRegistry makes a new class on every
    header set, which was a fifth of the CPU time of rendering a message."""

    def __init__(self) -> None:
        super().__init__()
        self._made: dict[str, type[BaseHeader]] = {}

    def __getitem__(self, name: str) -> type[BaseHeader]:
        key = name.lower()
        if key not in self._made:
            self._made[key] = super().__getitem__(name)
        return self._made[key]


_POLICY = email.policy.default.clone(header_factory=_HeaderClasses())
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
    message = EmailMessage(policy=_POLICY)
    message["From"] = settings.email_sender
    message["To"] = letter.to
    message["Subject"] = "Verify your email address"
    message["Date"] = formatdate(localtime=False)
    # One Message-ID per job: a re-sent copy of the same job is recognisably the same email.
    message["Message-ID"] = verify_message_id(letter.job_id, settings.email_sender)
    message.set_content(_templates.get_template("verify_email.txt").render(fields))
    message.add_alternative(
        _templates.get_template("verify_email.html").render(fields), subtype="html"
    )
    return message


@dataclass
class _Connection:
    smtp: ConfirmingSMTP
    idle_since: float = 0.0
    messages: int = 0


Confirm = Callable[[], Awaitable[object]]


class ConfirmingSMTP(aiosmtplib.SMTP):
    """An SMTP client whose DATA holds the final dot back until `confirm` has returned.

    The server takes responsibility for a message only at the dot (RFC 5321 4.1.1.4). Checking
    the database there, just before it, leaves one round trip between a check that passed and
    the server's 250, instead of the whole conversation (decision 006).
    """

    confirm: Confirm | None = None

    async def data(
        self,
        message: str | bytes,
        /,
        *,
        timeout: float | Default | None = Default.token,  # noqa: ASYNC109 (aiosmtplib's signature)
    ) -> aiosmtplib.SMTPResponse:
        if self.confirm is None or self.protocol is None:
            return await super().data(message, timeout=timeout)
        if timeout is Default.token:
            timeout = self.timeout
        if isinstance(message, str):
            message = message.encode("ascii")
        start = await self.execute_command(b"DATA", timeout=timeout)
        if start.code != SMTPStatus.start_input:
            raise aiosmtplib.SMTPDataError(start.code, start.message)
        # What aiosmtplib's own DATA sends, in two parts: the lines, then the dot.
        self.protocol.write(PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message)))
        await self.confirm()
        self.protocol.write(b".\r\n")
        try:
            response = await self.protocol.read_response(timeout=timeout)
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
            self.close()
            raise
        if response.code != SMTPStatus.completed:
            raise aiosmtplib.SMTPDataError(response.code, response.message)
        return response


class Mailer:
    """A small pool of SMTP connections to the configured server, each lent to one send at a
    time and reused for many messages; every command has a timeout.

    Reuse saves connect, greeting, EHLO (and STARTTLS and AUTH) and QUIT on every email.
    """

    def __init__(self, settings: Settings, size: int | None = None) -> None:
        self.settings = settings
        self._slots = asyncio.Semaphore(size or settings.worker_max_jobs)
        self._idle: list[_Connection] = []  # last in, first out: the freshest is likeliest alive
        self._closed = False

    async def send(self, message: EmailMessage, confirm: Confirm | None = None) -> None:
        """Send `message`; returns on the server's 250 with no other word to the server, so
        that a transaction committed next follows the 250 at once (decision 006). `confirm`
        runs after the message's last line, before the final dot: if it raises, the server
        gets no dot, keeps nothing, and the send fails.

        A reused connection that turns out dropped is replaced once: what the server got of
        the message is as unknown as on any failed send, and the retry of the job that a
        failure would cause sends it again just the same.
        """
        async with self._slots:
            connection = await self._checkout()
            try:
                await self._send_on(connection, message, confirm)
            except aiosmtplib.SMTPServerDisconnected:
                if not connection.messages:
                    raise
                connection = _Connection(await self._connect())
                await self._send_on(connection, message, confirm)
            self._checkin(connection)

    async def _send_on(
        self, connection: _Connection, message: EmailMessage, confirm: Confirm | None
    ) -> None:
        connection.smtp.confirm = confirm
        try:
            await connection.smtp.send_message(message)
        except BaseException:
            connection.smtp.close()  # after an error or a cancellation its state is unknown
            raise
        finally:
            connection.smtp.confirm = None

    def _checkin(self, connection: _Connection) -> None:
        connection.messages += 1
        connection.idle_since = time.monotonic()
        if self._closed:
            connection.smtp.close()
        else:
            self._idle.append(connection)

    async def close(self) -> None:
        """Say QUIT on every idle connection (at worker shutdown); a send after it still works."""
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(_quit(connection.smtp) for connection in idle))

    async def _checkout(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            try:
                usable = await self._usable(connection)
            except BaseException:  # cancelled mid-check: out of the pool, so closed here
                connection.smtp.close()
                raise
            if usable:
                return connection
        return _Connection(await self._connect())

    async def _usable(self, connection: _Connection) -> bool:
        """Whether a pooled connection can take another message; if not, it is closed."""
        smtp = connection.smtp
        if not smtp.is_connected:  # the server hung up (idle timeout, restart)
            smtp.close()
            return False
        if connection.messages >= MAX_MESSAGES_PER_CONNECTION:
            await _quit(smtp)
            return False
        if time.monotonic() - connection.idle_since > IDLE_CHECK_SECONDS:
            # A connection idle this long may have been dropped without a word (a NAT or
            # firewall timeout): NOOP finds out before a message depends on it.
            try:
                await smtp.noop()
            except aiosmtplib.SMTPException:
                smtp.close()
                return False
        return True

    async def _connect(self) -> ConfirmingSMTP:
        s = self.settings
        smtp = ConfirmingSMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_username,
            password=s.smtp_password.get_secret_value() if s.smtp_password else None,
            use_tls=s.smtp_tls is SmtpTls.TLS,
            start_tls=s.smtp_tls is SmtpTls.STARTTLS,
            timeout=s.smtp_timeout_seconds,
        )
        await smtp.connect()
        return smtp


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    try:
        await smtp.quit()
    except aiosmtplib.SMTPException:
        smtp.close()
