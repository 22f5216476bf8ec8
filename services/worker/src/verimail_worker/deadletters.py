"""Dead letters: tasks that failed for good, kept in PostgreSQL to be looked at and re-queued."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from verimail_shared.db import transaction
from verimail_shared.tables import DeadTask


async def bury(
    sessions: async_sessionmaker[AsyncSession],
    *,
    job_id: str,
    task: str,
    queue: str,
    payload: Any,
    tries: int,
    error: str,
) -> None:
    async with transaction(sessions) as session:
        session.add(
            DeadTask(
                job_id=job_id,
                task=task,
                queue=queue,
                payload=payload if isinstance(payload, dict) else {"raw": repr(payload)},
                tries=tries,
                last_error=error,
            )
        )


async def count_waiting(sessions: async_sessionmaker[AsyncSession]) -> dict[tuple[str, str], int]:
    """Dead tasks not re-queued yet, by (task, queue)."""
    async with sessions() as session:
        rows = await session.execute(
            select(col(DeadTask.task), col(DeadTask.queue), func.count())
            .where(col(DeadTask.requeued_at).is_(None))
            .group_by(col(DeadTask.task), col(DeadTask.queue))
        )
        return {(task, queue): count for task, queue, count in rows}
