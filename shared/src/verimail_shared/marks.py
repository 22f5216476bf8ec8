"""Outbox marks written in batches: ids gathered for a short interval, then one UPDATE.

Both services mark outbox rows on their hot path — the API marks a row dispatched once its job
is enqueued (decision 012), the worker marks it completed once its job has ended (decision 015).
A transaction per mark would cost a signup or a task several PostgreSQL round trips; a batch
costs one transaction for every id added within `interval`.

A mark is a hint, never a record of success, so a late or lost one is harmless: a row left
undispatched is enqueued again by the relay, and arq refuses the duplicate job id; a row left
unfinished is looked up by the reconciler, which finds the job's arq result and marks it.
A write that fails keeps its ids for the next try; `close` writes what is left at once, so a
graceful stop loses nothing (a crash loses at most one interval of marks).
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Hashable
from typing import ClassVar, Generic, TypeVar

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from verimail_shared import outbox
from verimail_shared.db import transaction

log = structlog.get_logger(__name__)
# Long enough to gather tens of signups under load into one UPDATE, well below the relay's wait
# (OUTBOX_RELAY_AFTER_SECONDS, 5 s), so the relay does not enqueue rows again while they wait.
DISPATCHED_INTERVAL_SECONDS = 0.5
# Short: a completion mark only spares the reconciler a look, and tasks end by the thousand.
COMPLETED_INTERVAL_SECONDS = 0.05
# After a failed write (PostgreSQL down), how long the ids wait before the next try.
RETRY_SECONDS = 1.0

K = TypeVar("K", bound=Hashable)


class Marks(ABC, Generic[K]):
    """Collects ids and writes them together, at most once per `interval`.

    The flusher is a task started by the first `add` after a quiet spell and ended when nothing
    is left, so an idle process wakes for nothing.
    """

    name: ClassVar[str]
    default_interval: ClassVar[float]

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        interval: float | None = None,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        self._sessions = sessions
        self._interval = self.default_interval if interval is None else interval
        self._retry_seconds = retry_seconds
        self._pending: set[K] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()

    @abstractmethod
    async def mark(self, session: AsyncSession, keys: list[K]) -> None:
        """Mark the rows of `keys` (one UPDATE)."""

    async def write(self, keys: list[K]) -> None:
        async with transaction(self._sessions) as session:
            await self.mark(session, keys)

    def add(self, key: K) -> None:
        """Mark `key` within `interval` seconds (or at `close`)."""
        self._pending.add(key)
        self._start_flusher()

    async def flush(self) -> bool:
        """Write every pending mark now; on failure they stay pending and this returns False."""
        keys, self._pending = list(self._pending), set()
        if not keys:
            return True
        try:
            await self.write(keys)
        except Exception as exc:  # a mark must never fail the request or task that added it
            self._pending.update(keys)
            if not self._closing.is_set():
                self._start_flusher()  # the flusher may have found nothing pending and ended
            log.warning(
                "outbox_marks_not_written",
                mark=self.name,
                count=len(keys),
                error=f"{type(exc).__name__}: {exc}",
            )
            return False
        return True

    async def close(self) -> None:
        """Write what is still pending, now, without waiting out the interval (at shutdown).

        Best effort: if PostgreSQL refuses, the marks are left to the relay and reconciler.
        """
        self._closing.set()
        if self._flusher is not None:
            await self._flusher
        await self.flush()

    def _start_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_later(), name=f"{self.name}-marks")

    async def _flush_later(self) -> None:
        # Ids added while a write is under way wait for the next round of this loop.
        while self._pending:
            await self._pause(self._interval)
            if not await self.flush():
                if self._closing.is_set():
                    return
                await self._pause(self._retry_seconds)

    async def _pause(self, seconds: float) -> None:
        # The pause is over, or closing cut it short.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), seconds)


class DispatchedMarks(Marks[int]):
    """Outbox row ids whose jobs are enqueued: their `dispatched_at` (decision 012)."""

    name = "dispatched"
    default_interval = DISPATCHED_INTERVAL_SECONDS

    async def mark(self, session: AsyncSession, keys: list[int]) -> None:
        await outbox.mark_dispatched(session, keys)


class Completions(Marks[str]):
    """Job ids that have ended (processed, or dead letters): their `completed_at` (decision 015)."""

    name = "completed"
    default_interval = COMPLETED_INTERVAL_SECONDS

    async def mark(self, session: AsyncSession, keys: list[str]) -> None:
        await outbox.mark_completed(session, keys)
