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
from arq.constants import job_key_prefix, result_key_prefix
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from verimail_shared import queue
from verimail_shared.db import transaction
from verimail_shared.jobs import TaskName, TaskPayload, deserialize_job
from verimail_shared.tables import DeadTask, OutboxTask, loaded

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
    """Enqueue the row's job with `_defer_by` the time left until the row's due time, so that
    a late relay adds no delay of its own."""
    left = (row.due_at - datetime.now(UTC)).total_seconds()
    return await queue.enqueue(
        redis, TaskName(row.task), row.payload, job_id=row.job_id, defer_by=max(left, 0)
    )


async def mark_dispatched(session: AsyncSession, ids: list[int]) -> None:
    """The rows' jobs are in Redis: the relay need not enqueue them (the reconciler checks)."""
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


async def mark_completed(session: AsyncSession, job_ids: list[str]) -> None:
    """The jobs are done (processed, or dead letters): Redis no longer needs to hold them."""
    await session.execute(
        update(OutboxTask)
        .where(col(OutboxTask.job_id).in_(job_ids), col(OutboxTask.completed_at).is_(None))
        .values(completed_at=datetime.now(UTC))
    )


# Called like `relay`, by the same loop in every worker: the signatures match on purpose.
async def reconcile(
    sessions: async_sessionmaker[AsyncSession],
    redis: ArqRedis,
    *,
    older_than_seconds: float,
    batch: int = RELAY_BATCH,
) -> int:
    """Enqueue again the unfinished jobs that Redis no longer has; returns how many.

    Redis acknowledges a write before it is on disk (appendfsync everysec) or on a replica, so
    a crash or a failover can lose a job after it was dispatched. Every unfinished job has an
    `arq:job:` key while it is queued, deferred, retrying or running; a row whose key is gone
    was lost, and goes back on its queue under the same job id, unless arq's result says it
    succeeded or a dead letter says it failed for good.
    """
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than_seconds)
    async with transaction(sessions) as session:
        rows = (
            await session.scalars(
                select(OutboxTask)
                .where(
                    col(OutboxTask.dispatched_at) < cutoff,
                    col(OutboxTask.completed_at).is_(None),
                )
                .order_by(col(OutboxTask.dispatched_at))
                .limit(batch)
                .with_for_update(skip_locked=True)
            )
        ).all()
        if not rows:
            return 0
        async with redis.pipeline(transaction=False) as pipe:
            for row in rows:
                pipe.exists(job_key_prefix + row.job_id)
                pipe.get(result_key_prefix + row.job_id)
            found = iter(await pipe.execute())
        state = [(row, next(found), next(found)) for row in rows]
        gone = [(row, result) for row, queued, result in state if not queued]
        buried = await _dead_letters(session, [row.job_id for row, result in gone if result])
        # A job that succeeded or became a dead letter has finished; only its completion mark
        # was lost (decision 015). Any other result is arq's, not the task's: a job whose key a
        # failover lost ("job expired"), or one cut off at arq's timeout. It runs again.
        finished = [
            row.job_id for row, result in gone if _succeeded(result) or row.job_id in buried
        ]
        lost = [row for row, result in gone if row.job_id not in finished]
        if finished:
            await mark_completed(session, finished)
        for row in lost:
            await redis.delete(result_key_prefix + row.job_id)  # arq enqueues no id with one
            await enqueue(redis, row)
            log.warning("outbox_job_lost_requeued", job_id=row.job_id, task=row.task)
        # Checked rows wait another period before the next check.
        await mark_dispatched(session, [loaded(row.id) for row in rows])
    return len(lost)


def _succeeded(result: bytes | None) -> bool:
    """Whether an arq result records a successful run."""
    if result is None:
        return False
    try:
        return deserialize_job(result).get("s") is True
    except (ValueError, AttributeError):
        return False


async def _dead_letters(session: AsyncSession, job_ids: list[str]) -> set[str]:
    if not job_ids:
        return set()
    job_id = col(DeadTask.job_id)
    found = await session.scalars(select(job_id).where(job_id.in_(job_ids)))
    return set(found)


async def purge(sessions: async_sessionmaker[AsyncSession], older_than: timedelta) -> int:
    """Delete rows finished longer than `older_than` ago; the outbox is not an archive."""
    cutoff = datetime.now(UTC) - older_than
    async with transaction(sessions) as session:
        result = await session.execute(
            delete(OutboxTask).where(col(OutboxTask.completed_at) < cutoff)
        )
    return int(getattr(result, "rowcount", 0) or 0)
