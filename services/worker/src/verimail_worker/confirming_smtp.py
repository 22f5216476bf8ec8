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

# After the dot's timeout, how long an answer already on its way may still take to be read: a
# process paused past the timeout wakes to its expired timer before it reads its socket.
LATE_ANSWER_GRACE_SECONDS = 0.5


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
        # From the dot on, an answer is expected: one that comes before the read below starts
        # is kept for it, not dropped as unsolicited (a pinned internal of aiosmtplib).
        self.protocol._response_pending = True
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

    The read is not cancelled when the timeout fires: it gets `LATE_ANSWER_GRACE_SECONDS` more.
    A process paused past its timeout (SIGSTOP, a stalled VM) wakes to its expired timer before
    the loop reads the `250` waiting in its socket (uvloop runs due timers first); cancelling
    then dropped that answer, and the dot counted as unanswered, so an identical copy followed
    (decision 090). Only a server that says nothing, or hangs up, leaves it unanswered.
    """
    read = asyncio.ensure_future(protocol.read_response())
    try:
        for wait in (seconds, LATE_ANSWER_GRACE_SECONDS):
            done, _ = await asyncio.wait({read}, timeout=wait)
            if done:
                return read.result()
        error: Exception = aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response")
    except aiosmtplib.SMTPServerDisconnected as exc:
        error = exc
    finally:
        read.cancel()
    smtp.close()
    raise UnansweredData(f"no answer to the final dot: {error}") from error
