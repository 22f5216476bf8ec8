"""A small pool of SMTP connections to the configured server, reused for many messages
(decision 013)."""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from email.message import EmailMessage

import aiosmtplib

from verimail_shared.settings import Settings, SmtpTls
from verimail_worker.confirming_smtp import Confirm, ConfirmingSMTP, UnansweredData

# Many servers limit the messages per connection (often to 100) and answer 421 past it.
MAX_MESSAGES_PER_CONNECTION = 100
# A message whose final dot got no answer is sent again, the same bytes, this many times.
UNANSWERED_DATA_RESENDS = 2
IDLE_CHECK_SECONDS = 30.0


@dataclass
class _Connection:
    smtp: ConfirmingSMTP
    idle_since: float = 0.0
    messages: int = 0


class SmtpPool:
    """A small pool of SMTP connections to the configured server, each lent to one send at a
    time and reused for many messages; every command has a timeout.

    Reuse saves connect, greeting, EHLO (and STARTTLS and AUTH) and QUIT on every email.
    """

    def __init__(self, settings: Settings, size: int | None = None) -> None:
        self.settings = settings
        self._slots = asyncio.Semaphore(size or settings.worker_max_jobs)
        self._idle: list[_Connection] = []  # last in, first out: the freshest is likeliest alive
        self._closed = False
        self._tls_context = tls_context(settings)

    async def send(self, message: EmailMessage, confirm: Confirm | None = None) -> None:
        """Send `message`; returns on the server's 250 with no other word to the server, so
        that a transaction committed next follows the 250 at once (decision 006). `confirm`
        runs after the message's last line, before the final dot: if it raises, the server
        gets no dot, keeps nothing, and the send fails.

        A reused connection that turns out dropped is replaced once: what the server got of
        the message is as unknown as on any failed send, and the retry of the job that a
        failure would cause sends it again just the same. A final dot without an answer is
        followed by the same message on a new connection, up to UNANSWERED_DATA_RESENDS times.
        """
        async with self._slots:
            connection = await self._checkout()
            resends = UNANSWERED_DATA_RESENDS
            while True:
                try:
                    await self._send_on(connection, message, confirm)
                    break
                except UnansweredData:
                    # Rather a copy than a loss (decision 090): the same message again, with
                    # its Message-ID and link, so that the copies are one email to the reader.
                    if not resends:
                        raise
                    resends -= 1
                except aiosmtplib.SMTPServerDisconnected:
                    if not connection.messages:
                        raise
                connection = _Connection(await self._connect())
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
            tls_context=self._tls_context,
            timeout=s.smtp_timeout_seconds,
        )
        await smtp.connect()
        return smtp


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The system's CAs, and SMTP_CA_FILE's beside them; None for aiosmtplib's default."""
    if settings.smtp_ca_file is None:
        return None
    context = ssl.create_default_context()
    context.load_verify_locations(cafile=settings.smtp_ca_file)
    return context


async def _quit(smtp: aiosmtplib.SMTP) -> None:
    try:
        await smtp.quit()
    except aiosmtplib.SMTPException:
        smtp.close()
