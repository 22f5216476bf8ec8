"""An SMTP client that asks a last question before the final dot of DATA (decision 006)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiosmtplib
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from aiosmtplib.typing import Default, SMTPStatus

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
