"""The queue-depth gauge counts waiting jobs: running ones are not `ready` (KEDA scales on it)."""

from __future__ import annotations

import asyncio
from typing import Any

from arq.connections import ArqRedis
from arq.worker import func

from tests.support.polling import eventually
from tests.support.services import running_worker
from verimail_shared.jobs import Queue, queue_key
from verimail_shared.settings import Settings
from verimail_worker import metrics
from verimail_worker.worker import record_queue_depth


def depth(queue: str, state: str) -> float:
    value: float = metrics.QUEUE_DEPTH.labels(queue, state)._value.get()
    return value


async def test_running_jobs_are_not_counted_as_ready(settings: Settings, redis: ArqRedis) -> None:
    release = asyncio.Event()
    running: list[str] = []

    async def hold(ctx: dict[str, Any], payload: dict[str, Any]) -> None:
        running.append(ctx["job_id"])
        await release.wait()

    key = queue_key(Queue.CRITICAL)
    for _ in range(5):
        await redis.enqueue_job("hold", {}, _queue_name=key)
    await redis.enqueue_job("hold", {}, _queue_name=key, _defer_by=3600)
    async with running_worker(settings, functions=[func(hold, name="hold")], max_jobs=2):
        try:
            await eventually(lambda: len(running) == 2)
            await record_queue_depth(redis, [key])
        finally:
            release.set()
    assert (depth("critical", "ready"), depth("critical", "deferred")) == (3, 1)
    await redis.delete(key)
