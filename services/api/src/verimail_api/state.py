"""What the API holds for its lifetime: connections, the hasher, the signup service."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog
from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine

from verimail_api.metrics import TASKS_ENQUEUED
from verimail_api.passwords import Passwords
from verimail_api.signup import Signup
from verimail_shared import db, outbox, queue
from verimail_shared.jobs import TASK_QUEUES, TaskName
from verimail_shared.settings import Settings
from verimail_shared.tables import OutboxTask

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ArqTaskQueue:
    """The signup service's TaskQueue, on arq."""

    redis: ArqRedis
    timeout: float

    async def enqueue(self, job: OutboxTask) -> None:
        async with asyncio.timeout(self.timeout):
            fresh = await outbox.enqueue(self.redis, job)
        queue = TASK_QUEUES[TaskName(job.task)]
        if fresh:
            TASKS_ENQUEUED.labels(job.task, queue).inc()
        log.info(
            "task_enqueued",
            task=job.task,
            queue=queue,
            job_id=job.job_id,
            due_at=job.due_at.isoformat(),
            max_tries=job.payload.get("max_tries"),
            already_queued=not fresh,
        )


@dataclass(frozen=True)
class State:
    settings: Settings
    engine: AsyncEngine
    redis: ArqRedis
    passwords: Passwords
    signup: Signup

    @classmethod
    def open(cls, settings: Settings) -> State:
        engine = db.create_engine(settings)
        redis = queue.connect(settings)
        passwords = Passwords(settings)
        signup = Signup(
            sessions=db.create_sessionmaker(engine),
            passwords=passwords,
            queue=ArqTaskQueue(redis, settings.dependency_timeout_seconds),
            max_tries=settings.verify_email_max_tries,
            defer_seconds=settings.verify_email_defer_seconds,
            mode=settings.signup_enqueue,
        )
        return cls(settings, engine, redis, passwords, signup)

    async def close(self) -> None:
        self.passwords.close()
        await self.redis.aclose(close_connection_pool=True)
        await self.engine.dispose()
