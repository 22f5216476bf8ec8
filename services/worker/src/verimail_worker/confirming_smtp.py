"""An SMTP client that asks a last question before the final dot of DATA (decision 006)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiosmtplib
from aiosmtplib.protocol import (  # pinned internals
    PERIOD_REGEX,
    SMTPProtocol,
    normalize_message_line_endings,
)
from aiosmtplib.typing import Default, SMTPStatus

Confirm = Callable[[], Awaitable[object]]
# How long an answer may take to surface once a timeout fired: already there if the process
# was only asleep.
LATE_ANSWER_GRACE_SECONDS = 0.1


class UnansweredData(aiosmtplib.SMTPServerDisconnected):
    """The final dot went out and no answer came back: the server may or may not have the
    message. Sent again, identical, it is a recognisable copy (decision 090)."""


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
        seconds = timeout if isinstance(timeout, float | int) else None
        response = await _answer_to_dot(self, self.protocol, seconds)
        if response.code != SMTPStatus.completed:
            raise aiosmtplib.SMTPDataError(response.code, response.message)
        return response


async def _answer_to_dot(
    smtp: aiosmtplib.SMTP, protocol: SMTPProtocol, seconds: float | None
) -> aiosmtplib.SMTPResponse:
    """The server's answer to the final dot, or `UnansweredData`.

    An answer already waiting when the timeout fires is still read: a process paused past its
    timeouts (SIGSTOP, a stalled VM) wakes up to both at once.
    """
    answer = asyncio.ensure_future(protocol.read_response(timeout=None))
    try:
        done, _ = await asyncio.wait({answer}, timeout=seconds)
        if not done:
            done, _ = await asyncio.wait({answer}, timeout=LATE_ANSWER_GRACE_SECONDS)
    except BaseException:
        answer.cancel()
        raise
    if not done:
        answer.cancel()
        smtp.close()
        raise UnansweredData("no answer to the final dot within the timeout")
    try:
        return answer.result()
    except aiosmtplib.SMTPServerDisconnected as exc:
        smtp.close()
        raise UnansweredData(f"closed before the answer to the final dot: {exc}") from exc
