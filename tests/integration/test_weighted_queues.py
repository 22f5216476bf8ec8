"""The worker shares its slots between `critical` and `default` 10 : 5, as simplebank's asynq does."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from arq.connections import ArqRedis
from arq.worker import func

from tests.support.polling import eventually
from tests.support.services import running_worker
from verimail_shared.jobs import Queue, queue_key, queue_of_key
from verimail_shared.settings import Settings
from verimail_worker.weighted import current_queue_key


class Recorder:
    def __init__(self, hold: float) -> None:
        self.hold = hold
        self.started: list[str] = []
        self.running = 0
        self.most_running = 0

    async def run(self, ctx: dict[str, Any], payload: dict[str, Any]) -> None:
        self.started.append(queue_of_key(current_queue_key()))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        await asyncio.sleep(self.hold)
        self.running -= 1


async def fill(redis: ArqRedis, queue: Queue, count: int) -> None:
    await asyncio.gather(
        *(redis.enqueue_job("record", {}, _queue_name=queue_key(queue)) for _ in range(count))
    )


async def test_with_both_queues_full_processed_shares_follow_the_weights(
    settings: Settings, redis: ArqRedis
) -> None:
    recorder = Recorder(hold=0.01)
    await fill(redis, Queue.CRITICAL, 800)
    await fill(redis, Queue.DEFAULT, 800)
    async with running_worker(settings, functions=[func(recorder.run, name="record")]):
        await eventually(lambda: len(recorder.started) >= 600, timeout=90)
    shares = Counter(recorder.started[:600])  # both queues still hold work throughout
    assert abs(shares["critical"] / 600 - 10 / 15) <= 0.1 * 10 / 15, shares
    assert abs(shares["default"] / 600 - 5 / 15) <= 0.1 * 5 / 15, shares


async def test_with_one_queue_empty_the_other_gets_every_slot(
    settings: Settings, redis: ArqRedis
) -> None:
    recorder = Recorder(hold=0.1)
    await fill(redis, Queue.DEFAULT, 60)
    async with running_worker(settings, functions=[func(recorder.run, name="record")]):
        await eventually(lambda: len(recorder.started) >= 60, timeout=30)
    assert set(recorder.started) == {"default"}
    assert recorder.most_running == settings.worker_max_jobs


async def test_a_retried_job_goes_back_to_its_own_queue(
    settings: Settings, redis: ArqRedis
) -> None:
    from arq.worker import Retry

    tries: list[tuple[str, int]] = []

    async def flaky(ctx: dict[str, Any], payload: dict[str, Any]) -> None:
        tries.append((queue_of_key(current_queue_key()), ctx["job_try"]))
        if ctx["job_try"] == 1:
            raise Retry(defer=0.01)

    await redis.enqueue_job("flaky", {}, _queue_name=queue_key(Queue.DEFAULT))
    async with running_worker(settings, functions=[func(flaky, name="flaky")]):
        await eventually(lambda: len(tries) >= 2)
    assert tries == [("default", 1), ("default", 2)]
    assert await redis.zcard(queue_key(Queue.DEFAULT)) == 0
