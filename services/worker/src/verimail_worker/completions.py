"""Outbox completion marks, written in batches instead of a transaction per job.

A finished job's outbox row only tells the reconciler that Redis need not hold the job any
more. A mark that is late, or lost with a crashed worker, costs nothing but a look: the
reconciler finds the job gone from Redis and enqueues it again, arq refuses it while its result
is kept, and a job that does run again finds its email sent (decision 015).
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from verimail_shared import outbox

log = structlog.get_logger(__name__)
FLUSH_INTERVAL_SECONDS = 0.05
RETRY_SECONDS = 1.0


class Completions:
    """Collects finished job ids and marks their outbox rows in one UPDATE per interval."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions
        self._pending: set[str] = set()
        self._added = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None

    def add(self, job_id: str) -> None:
        self._pending.add(job_id)
        self._added.set()

    def start(self) -> None:
        self._flusher = asyncio.create_task(self._run())

    async def close(self) -> None:
        """Stop the flusher and write what is pending (best effort: PostgreSQL may be down)."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.flush()

    async def flush(self) -> bool:
        """Mark every pending job; on failure they stay pending for the next flush."""
        job_ids, self._pending = list(self._pending), set()
        if not job_ids:
            return True
        try:
            await outbox.mark_completed(self._sessions, *job_ids)
        except Exception as exc:
            self._pending.update(job_ids)
            log.warning("completion_marks_not_written", count=len(job_ids), error=repr(exc))
            return False
        return True

    async def _run(self) -> None:
        while True:
            await self._added.wait()
            self._added.clear()
            await asyncio.sleep(FLUSH_INTERVAL_SECONDS)  # let the batch fill
            if not await self.flush():
                await asyncio.sleep(RETRY_SECONDS)
