"""What the API holds for its lifetime: connections, the hasher, the signup service."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import structlog
from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine

from verimail_api.metrics import TASKS_ENQUEUED
from verimail_api.passwords import Passwords
from verimail_api.signup import Signup
from verimail_shared import db, queue
from verimail_shared.jobs import TASK_QUEUES, TaskName, TaskPayload
from verimail_shared.settings import Settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ArqTaskQueue:
    """The signup service's TaskQueue, on arq."""

    redis: ArqRedis
    settings: Settings

    async def enqueue(self, task: TaskName, payload: TaskPayload) -> str:
        job_id = uuid.uuid4().hex
        async with asyncio.timeout(self.settings.dependency_timeout_seconds):
            await queue.enqueue(
                self.redis,
                task,
                payload,
                defer_by=self.settings.verify_email_defer_seconds,
                job_id=job_id,
            )
        TASKS_ENQUEUED.labels(task, TASK_QUEUES[task]).inc()
        log.info(
            "task_enqueued",
            task=task,
            queue=TASK_QUEUES[task],
            job_id=job_id,
            defer_seconds=self.settings.verify_email_defer_seconds,
            max_tries=payload.max_tries,
        )
        return job_id


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
            queue=ArqTaskQueue(redis, settings),
            max_tries=settings.verify_email_max_tries,
        )
        return cls(settings, engine, redis, passwords, signup)

    async def close(self) -> None:
        self.passwords.close()
        await self.redis.aclose(close_connection_pool=True)
        await self.engine.dispose()
