"""What the API holds for its lifetime: connections, the hasher, the signup service."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network

import structlog
from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request

from verimail_api.metrics import TASKS_ENQUEUED
from verimail_api.passwords import Passwords
from verimail_api.ratelimit import (
    Rate,
    RateLimiter,
    UntrustedForwarding,
    client_ip,
    is_trusted,
    trusted_networks,
)
from verimail_api.signup import Signup
from verimail_shared import db, outbox, queue
from verimail_shared.jobs import TASK_QUEUES, TaskName
from verimail_shared.marks import DispatchedMarks
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
        # DEBUG: the request's access line carries the job id (decision 053).
        log.debug(
            "task_enqueued",
            task=job.task,
            queue=queue,
            job_id=job.job_id,
            due_at=job.due_at,
            max_tries=job.payload.get("max_tries"),
            already_queued=not fresh,
        )


@dataclass(frozen=True)
class Limits:
    """The configured rate limits, and who is behind a request."""

    limiter: RateLimiter
    rates: dict[str, Rate | None]
    trusted_proxies: list[IPv4Network | IPv6Network]
    untrusted_forwarding: UntrustedForwarding = field(default_factory=UntrustedForwarding)

    async def hit(self, name: str, key: str) -> None:
        await self.limiter.hit(name, key, self.rates[name])

    def client(self, request: Request) -> str:
        peer = request.client.host if request.client else "unknown"
        if "x-forwarded-for" in request.headers and not is_trusted(peer, self.trusted_proxies):
            self.untrusted_forwarding.seen(peer)
        return client_ip(request, self.trusted_proxies)

    @classmethod
    def from_settings(cls, settings: Settings, redis: ArqRedis) -> Limits:
        rates = {
            "create_user": settings.rate_limit_create_user,
            "verify_email": settings.rate_limit_verify_email,
            "resend_ip": settings.rate_limit_resend_ip,
            "resend_email": settings.rate_limit_resend_email,
        }
        return cls(
            RateLimiter(redis, settings.dependency_timeout_seconds),
            {name: Rate.parse(text) for name, text in rates.items()},
            trusted_networks(settings),
        )


@dataclass(frozen=True)
class State:
    settings: Settings
    engine: AsyncEngine
    redis: ArqRedis
    passwords: Passwords
    signup: Signup
    limits: Limits

    @classmethod
    def open(cls, settings: Settings) -> State:
        # No ping per checkout (three round trips with asyncpg, an eighth of a signup's event-loop
        # CPU): after a PostgreSQL restart the first use of a dead connection answers 503 and
        # SQLAlchemy replaces the pool (decision 012).
        engine = db.create_engine(settings, pre_ping=False)
        redis = queue.connect(settings)
        passwords = Passwords(settings)
        sessions = db.create_sessionmaker(engine)
        signup = Signup(
            engine=engine,
            sessions=sessions,
            passwords=passwords,
            queue=ArqTaskQueue(redis, settings.dependency_timeout_seconds),
            marks=DispatchedMarks(sessions),
            max_tries=settings.verify_email_max_tries,
            defer_seconds=settings.verify_email_defer_seconds,
            mode=settings.signup_enqueue,
        )
        return cls(
            settings, engine, redis, passwords, signup, Limits.from_settings(settings, redis)
        )

    async def close(self) -> None:
        await self.signup.marks.close()
        self.passwords.close()
        await self.redis.aclose(close_connection_pool=True)
        await self.engine.dispose()
