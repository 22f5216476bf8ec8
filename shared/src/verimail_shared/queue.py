"""The arq side of the job contract: one way to connect to Redis and one way to enqueue."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from arq.connections import ArqRedis, RedisSettings
from arq.constants import (
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.jobs import serialize_job as serialize_job_def
from arq.utils import timestamp_ms, to_ms
from redis.asyncio import ConnectionPool
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from verimail_shared.jobs import (
    TASK_QUEUES,
    WAKEUP_CHANNEL,
    TaskName,
    TaskPayload,
    deserialize_job,
    queue_key,
    serialize_job,
)
from verimail_shared.settings import Settings


def redis_settings(settings: Settings) -> RedisSettings:
    """arq's connection settings, for the worker (which pings and retries at start-up)."""
    result = RedisSettings.from_dsn(settings.redis_url)
    if settings.redis_sentinels:
        # arq asks the sentinels for the master; REDIS_URL still gives database and password.
        result.host = list(settings.redis_sentinels)
        result.sentinel = True
        result.sentinel_master = settings.redis_sentinel_master
    result.conn_timeout = int(max(settings.dependency_timeout_seconds, 1))
    result.conn_retries = 30
    if result.ssl:
        result.ssl_check_hostname = True  # arq's default is False
        result.ssl_ca_certs = str(settings.redis_ca_file) if settings.redis_ca_file else None
    return result


def _tls(settings: Settings) -> dict[str, Any]:
    """redis-py's options for `rediss://`: the name checked, a private CA beside the system's."""
    if not settings.redis_url.startswith("rediss://"):
        return {}
    ca_file = str(settings.redis_ca_file) if settings.redis_ca_file else None
    return {"ssl_check_hostname": True, "ssl_ca_certs": ca_file}


def connect(settings: Settings) -> ArqRedis:
    """A lazily connecting client: a process may start while Redis is down."""
    pool = _sentinel_pool(settings) if settings.redis_sentinels else _direct_pool(settings)
    return ArqRedis(pool, job_serializer=serialize_job, job_deserializer=deserialize_job)


def _direct_pool(settings: Settings) -> ConnectionPool:
    timeout = settings.dependency_timeout_seconds
    return ConnectionPool.from_url(
        settings.redis_url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        **_tls(settings),
    )


def _sentinel_pool(settings: Settings) -> SentinelConnectionPool:
    """Connections to whichever server the sentinels name master, asked again on each reconnect."""
    timeout = settings.dependency_timeout_seconds
    url = RedisSettings.from_dsn(settings.redis_url)
    # redis-py's sentinel classes carry no type hints.
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        settings.redis_sentinels,
        sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
    )
    return SentinelConnectionPool(  # type: ignore[no-untyped-call]
        settings.redis_sentinel_master,
        sentinel,
        db=url.database,
        username=url.username,
        password=url.password,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        ssl=url.ssl,
        **_tls(settings),
    )


# arq's `enqueue_job` in one round trip instead of four, with the wake-up; the script says how.
ENQUEUE_JOB = (files("verimail_shared") / "lua" / "enqueue_job.lua").read_text()


async def enqueue(
    redis: ArqRedis,
    task: TaskName,
    payload: TaskPayload | dict[str, Any],
    *,
    job_id: str,
    defer_by: float = 0,
) -> bool:
    """Put a task on its queue under `job_id`; False if a job with that id exists already
    (queued, running, or finished within arq's result retention), which makes it idempotent.

    The job is what `ArqRedis.enqueue_job(task, payload, _job_id=job_id, _queue_name=…,
    _defer_by=defer_by)` would write (arq's keys, encoding, expiry and score), so arq's `Job`
    reads it; one script call does arq's checks and writes, and wakes idle workers.
    """
    args = payload if isinstance(payload, dict) else payload.model_dump(mode="json")
    queue = TASK_QUEUES[task]
    enqueued_ms = timestamp_ms()
    defer_ms = to_ms(defer_by)  # rounded to the millisecond, as arq does
    score = enqueued_ms + defer_ms
    job = serialize_job_def(task, (args,), {}, None, enqueued_ms, serializer=redis.job_serializer)
    script = redis.register_script(ENQUEUE_JOB)  # EVALSHA: the script is sent once per server
    added = await script(
        keys=[job_key_prefix + job_id, result_key_prefix + job_id, queue_key(queue)],
        args=[job_id, score, defer_ms + redis.expires_extra_ms, job, WAKEUP_CHANNEL, queue.value],
    )
    return bool(added)


async def requeue(redis: ArqRedis, task: TaskName, payload: dict[str, Any], *, job_id: str) -> bool:
    """Enqueue a job that failed for good again, under its own id (so the work it already did,
    such as a sent email, is recognised), with a fresh count of tries."""
    await redis.delete(result_key_prefix + job_id, retry_key_prefix + job_id)
    return await enqueue(redis, task, payload, job_id=job_id)


@dataclass(frozen=True)
class QueueCounts:
    ready: int
    deferred: int
    in_progress: int


# Ready, deferred and running jobs per queue in one call; the script says how.
COUNT_QUEUES = (files("verimail_shared") / "lua" / "count_queues.lua").read_text()
RUNNING_LOOKUP_LIMIT = 1000


async def queue_counts(redis: ArqRedis, queues: list[str]) -> dict[str, QueueCounts]:
    """Jobs per queue: due now and waiting, due later, and running; one round trip."""
    count = redis.register_script(COUNT_QUEUES)  # EVALSHA: the script is sent once
    rows = await count(
        keys=[queue_key(name) for name in queues],
        args=[timestamp_ms(), in_progress_key_prefix, RUNNING_LOOKUP_LIMIT],
    )
    return {
        name: QueueCounts(ready=due - running, deferred=later, in_progress=running)
        for name, (due, later, running) in zip(queues, rows, strict=True)
    }
