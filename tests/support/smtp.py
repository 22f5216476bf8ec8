"""A real SMTP server for the tests (aiosmtpd), which keeps what it receives and can refuse."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from verimail_shared.embedded import free_port, verification_link


@dataclass
class Inbox:
    """The handler: received messages, plus switches to answer 4xx or 5xx on purpose."""

    messages: list[EmailMessage] = field(default_factory=list)
    data_reply: str | None = None  # e.g. "421 try again later" for every DATA
    refuse: dict[str, str] = field(default_factory=dict)  # recipient -> "550 no such user"
    rcpt_delay: float = 0.0  # a slow server: before any message is taken, never after
    hold: bool = False  # park every new RCPT until released
    parked: int = 0
    # After a message is kept: wait this long before answering, or run this first, or (for
    # the next `hang_ups` messages) close the connection with no answer at all.
    data_delay: float = 0.0
    before_data_reply: Callable[[], Awaitable[None]] | None = None
    hang_ups: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.rcpt_delay:
            await asyncio.sleep(self.rcpt_delay)
        if self.hold:
            with self.lock:
                self.parked += 1
            while self.hold:
                await asyncio.sleep(0.01)
            with self.lock:
                self.parked -= 1
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_reply:
            return self.data_reply
        content = envelope.content if isinstance(envelope.content, bytes) else b""
        message = message_from_bytes(content, policy=default_policy)
        with self.lock:
            self.messages.append(message)
            hang_up = self.hang_ups > 0
            self.hang_ups -= hang_up
        if hang_up and server.transport is not None:
            assert isinstance(server.transport, asyncio.Transport)
            server.transport.abort()  # the client cannot tell whether the message was taken
        if self.before_data_reply is not None:
            await self.before_data_reply()
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        return "250 Message accepted for delivery"


class SmtpServer:
    def __init__(self, require_auth: bool = False) -> None:
        self.port = free_port()
        self.inbox = Inbox()
        auth: dict[str, Any] = {}
        if require_auth:  # any login is accepted; the test is about where the password goes
            auth = {
                "auth_require_tls": False,
                "auth_required": True,
                "authenticator": lambda *_: AuthResult(success=True),
            }
        self._controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port, **auth)

    @property
    def messages(self) -> list[EmailMessage]:
        with self.inbox.lock:
            return list(self.inbox.messages)

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if m["To"] == address]

    def link_to(self, address: str) -> str:
        (message,) = self.to(address)
        link = verification_link(message)
        assert link is not None, "the email has no verification link"
        return link

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()
