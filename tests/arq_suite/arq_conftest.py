"""arq's own test fixtures, with the weighted worker in place of arq's Worker.

`run.py` copies this file over the `tests/conftest.py` of arq's source distribution. It keeps
arq's fixtures (same names, same behaviour) except where they started a Redis container: the
Redis here is `ARQ_TEST_REDIS_URL` when set (it is flushed: never point it at a server that
holds anything), else a throwaway embedded server on a free port.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import arq
import arq.worker
import msgpack
import pytest
import redis.exceptions
from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from verimail_worker.weighted import WeightedWorker

# Every `Worker` arq's tests build, directly, through fixtures or through arq's CLI, is ours.
arq.worker.Worker = WeightedWorker  # type: ignore[misc]
arq.Worker = WeightedWorker  # type: ignore[misc]
Worker = WeightedWorker


@pytest.fixture(name="loop")
async def _fix_loop() -> asyncio.AbstractEventLoop:
    """The test's event loop, as pytest-asyncio's old `event_loop` fixture gave it."""
    return asyncio.get_running_loop()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    if url := os.environ.get("ARQ_TEST_REDIS_URL"):
        yield url
        return
    from verimail_shared.embedded import EmbeddedRedis

    with tempfile.TemporaryDirectory(prefix="arq-suite-redis-") as tmp:
        server = EmbeddedRedis(Path(tmp), appendonly=False)
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


@pytest.fixture(scope="session")
def test_redis_host(redis_url: str) -> str:
    return urlsplit(redis_url).hostname or "localhost"


@pytest.fixture(scope="session")
def test_redis_port(redis_url: str) -> int:
    return urlsplit(redis_url).port or 6379


@pytest.fixture(scope="session")
def test_redis_settings(test_redis_host: str, test_redis_port: int) -> RedisSettings:
    return RedisSettings(host=test_redis_host, port=test_redis_port)


@pytest.fixture
async def arq_redis(test_redis_host: str, test_redis_port: int) -> AsyncIterator[ArqRedis]:
    redis_ = ArqRedis(host=test_redis_host, port=test_redis_port, encoding="utf-8")
    await redis_.flushall()
    yield redis_
    await redis_.aclose(close_connection_pool=True)


@pytest.fixture
async def arq_redis_msgpack(test_redis_host: str, test_redis_port: int) -> AsyncIterator[ArqRedis]:
    redis_ = ArqRedis(
        host=test_redis_host,
        port=test_redis_port,
        encoding="utf-8",
        job_serializer=msgpack.packb,
        job_deserializer=functools.partial(msgpack.unpackb, raw=False),
    )
    await redis_.flushall()
    yield redis_
    await redis_.aclose(close_connection_pool=True)


@pytest.fixture
async def arq_redis_retry(test_redis_host: str, test_redis_port: int) -> AsyncIterator[ArqRedis]:
    redis_ = ArqRedis(
        host=test_redis_host,
        port=test_redis_port,
        encoding="utf-8",
        retry=Retry(backoff=NoBackoff(), retries=3),
        retry_on_timeout=True,
        retry_on_error=[redis.exceptions.ConnectionError],
    )
    await redis_.flushall()
    yield redis_
    await redis_.aclose(close_connection_pool=True)


def _worker_factory(default_pool: ArqRedis) -> tuple[Callable[..., Any], list[WeightedWorker]]:
    made: list[WeightedWorker] = []

    def create(
        functions: Any = (),
        burst: bool = True,
        poll_delay: float = 0,
        max_jobs: int = 10,
        arq_redis: ArqRedis = default_pool,
        **kwargs: Any,
    ) -> WeightedWorker:
        worker_ = WeightedWorker(
            functions=functions,
            redis_pool=arq_redis,
            burst=burst,
            poll_delay=poll_delay,
            max_jobs=max_jobs,
            **kwargs,
        )
        made.append(worker_)
        return worker_

    return create, made


@pytest.fixture
async def worker(arq_redis: ArqRedis) -> AsyncIterator[Callable[..., Any]]:
    create, made = _worker_factory(arq_redis)
    yield create
    if made:
        await made[-1].close()


@pytest.fixture
async def worker_retry(arq_redis_retry: ArqRedis) -> AsyncIterator[Callable[..., Any]]:
    create, made = _worker_factory(arq_redis_retry)
    yield create
    if made:
        await made[-1].close()


@pytest.fixture(name="create_pool")
async def fix_create_pool(loop: asyncio.AbstractEventLoop) -> AsyncIterator[Callable[..., Any]]:
    pools: list[ArqRedis] = []

    async def create_pool_(settings: RedisSettings, *args: Any, **kwargs: Any) -> ArqRedis:
        pool = await create_pool(settings, *args, **kwargs)
        pools.append(pool)
        return pool

    yield create_pool_

    await asyncio.gather(*[p.aclose(close_connection_pool=True) for p in pools])


@pytest.fixture(name="cancel_remaining_task")
def fix_cancel_remaining_task(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    async def cancel_remaining_task() -> None:
        tasks = asyncio.all_tasks(loop)
        cancelled = []
        for task in tasks:
            if "cancel_remaining_task()" not in repr(task):
                cancelled.append(task)
                task.cancel()
        if cancelled:
            print(f"Cancelled {len(cancelled)} ongoing tasks", file=sys.stderr)
            await asyncio.gather(*cancelled, return_exceptions=True)

    yield

    loop.run_until_complete(cancel_remaining_task())


class SetEnv:
    def __init__(self) -> None:
        self.envars: set[str] = set()

    def set(self, name: str, value: str) -> None:
        self.envars.add(name)
        os.environ[name] = value

    def clear(self) -> None:
        for n in self.envars:
            os.environ.pop(n)


@pytest.fixture
def env() -> Iterator[SetEnv]:
    setenv = SetEnv()
    yield setenv
    setenv.clear()
