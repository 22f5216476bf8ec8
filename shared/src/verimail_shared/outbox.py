"""The transactional outbox: tasks written with the data that calls for them, then enqueued.

A change and its task commit together or not at all. After the commit the writer enqueues the
task under the outbox row's job id and marks the row dispatched; if that fails (Redis down,
process killed), the relay in the worker service enqueues rows still undispatched a few
seconds later. arq refuses a second job with the same id, so enqueueing twice is harmless.
See docs/decisions/005.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import structlog
from arq.connections import ArqRedis
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from verimail_shared import queue
from verimail_shared.db import transaction
from verimail_shared.jobs import TaskName, TaskPayload
from verimail_shared.tables import OutboxTask, loaded

log = structlog.get_logger(__name__)
RELAY_BATCH = 100


def new_task(task: TaskName, payload: TaskPayload, defer_seconds: float) -> OutboxTask:
    """An outbox row for `task`, due `defer_seconds` from now, with a fresh job id."""
    return OutboxTask(
        job_id=uuid.uuid4().hex,
        task=task.value,
        payload=payload.model_dump(mode="json"),
        due_at=datetime.now(UTC) + timedelta(seconds=defer_seconds),
    )


async def enqueue(redis: ArqRedis, row: OutboxTask) -> bool:
    """Enqueue the row's job, due at the row's due time (so a late relay does not add delay)."""
    return await queue.enqueue(
        redis, TaskName(row.task), row.payload, job_id=row.job_id, defer_until=row.due_at
    )


async def mark_dispatched(session: AsyncSession, ids: list[int]) -> None:
    await session.execute(
        update(OutboxTask)
        .where(col(OutboxTask.id).in_(ids))
        .values(dispatched_at=datetime.now(UTC))
    )


async def relay(
    sessions: async_sessionmaker[AsyncSession],
    redis: ArqRedis,
    *,
    older_than_seconds: float,
    batch: int = RELAY_BATCH,
) -> int:
    """Enqueue one batch of rows left undispatched for `older_than_seconds`; returns how many.

    `FOR UPDATE SKIP LOCKED` lets every worker run a relay: each row goes to one of them.
    """
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than_seconds)
    async with transaction(sessions) as session:
        rows = (
            await session.scalars(
                select(OutboxTask)
                .where(col(OutboxTask.dispatched_at).is_(None), col(OutboxTask.created_at) < cutoff)
                .order_by(col(OutboxTask.id))
                .limit(batch)
                .with_for_update(skip_locked=True)
            )
        ).all()
        for row in rows:
            fresh = await enqueue(redis, row)
            log.info("outbox_relayed", job_id=row.job_id, task=row.task, already_queued=not fresh)
        if rows:
            await mark_dispatched(session, [loaded(row.id) for row in rows])
    return len(rows)


async def purge(sessions: async_sessionmaker[AsyncSession], older_than: timedelta) -> int:
    """Delete dispatched rows older than `older_than`; the outbox is not an archive."""
    cutoff = datetime.now(UTC) - older_than
    async with transaction(sessions) as session:
        result = await session.execute(
            delete(OutboxTask).where(col(OutboxTask.dispatched_at) < cutoff)
        )
    return int(getattr(result, "rowcount", 0) or 0)
