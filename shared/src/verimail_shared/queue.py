"""The arq side of the job contract: one way to connect to Redis and one way to enqueue."""

from __future__ import annotations

from datetime import timedelta

from arq.connections import ArqRedis, RedisSettings
from redis.asyncio import ConnectionPool
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from verimail_shared.jobs import (
    TASK_QUEUES,
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
    return result


def connect(settings: Settings) -> ArqRedis:
    """A lazily connecting client: a process may start while Redis is down."""
    pool = _sentinel_pool(settings) if settings.redis_sentinels else _direct_pool(settings)
    return ArqRedis(pool, job_serializer=serialize_job, job_deserializer=deserialize_job)


def _direct_pool(settings: Settings) -> ConnectionPool:
    timeout = settings.dependency_timeout_seconds
    return ConnectionPool.from_url(
        settings.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
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
    )


async def enqueue(
    redis: ArqRedis,
    task: TaskName,
    payload: TaskPayload,
    *,
    defer_by: float,
    job_id: str | None = None,
) -> str | None:
    """Put a task on its queue; returns the job id, or None if that job id exists already."""
    job = await redis.enqueue_job(
        task,
        payload.model_dump(mode="json"),
        _job_id=job_id,
        _queue_name=queue_key(TASK_QUEUES[task]),
        _defer_by=timedelta(seconds=defer_by) if defer_by else None,
    )
    return job.job_id if job else None
