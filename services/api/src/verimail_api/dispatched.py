"""Outbox rows marked dispatched in batches: one UPDATE for every row enqueued within a short
window, instead of a transaction per signup (decision 012)."""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from verimail_shared import outbox
from verimail_shared.db import transaction

log = structlog.get_logger(__name__)
# Long enough to gather tens of signups under load into one UPDATE, well below the relay's wait
# (OUTBOX_RELAY_AFTER_SECONDS, 5 s), so the relay does not enqueue rows again while they wait.
MARK_DELAY_SECONDS = 0.5


class DispatchedMarks:
    """Collects the ids of enqueued outbox rows and marks them dispatched together.

    A mark that is lost (the process dies, PostgreSQL fails) costs what a failed mark always
    cost: the relay enqueues the row again, and arq refuses the duplicate job id.
    """

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], delay: float = MARK_DELAY_SECONDS
    ) -> None:
        self._sessions = sessions
        self._delay = delay
        self._ids: list[int] = []
        self._flusher: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    def add(self, outbox_id: int) -> None:
        """Mark the row dispatched within `delay` seconds."""
        self._ids.append(outbox_id)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_later(), name="outbox-marks")

    async def close(self) -> None:
        """Mark every row still waiting, now (at shutdown)."""
        self._closing.set()
        if self._flusher is not None:
            await self._flusher
        await self._flush()

    async def _flush_later(self) -> None:
        # Rows added while an UPDATE is under way wait for the next round of this loop.
        while self._ids:
            with contextlib.suppress(TimeoutError):  # the delay is over, or closing cut it short
                await asyncio.wait_for(self._closing.wait(), self._delay)
            await self._flush()

    async def _flush(self) -> None:
        ids, self._ids = self._ids, []
        if not ids:
            return
        try:
            async with transaction(self._sessions) as session:
                await outbox.mark_dispatched(session, ids)
        except Exception as exc:  # the relay covers these rows; nothing here may fail a request
            log.warning("outbox_mark_deferred", rows=len(ids), error=f"{type(exc).__name__}: {exc}")
