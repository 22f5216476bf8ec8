"""The worker shares its slots between `critical` and `default` 10 : 5, as simplebank's asynq does."""

from __future__ import annotations

import asyncio
from collections import Counter
from importlib.resources import files
from typing import Any

from arq.connections import ArqRedis
from arq.constants import (
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.jobs import JobStatus
from arq.worker import func

from tests.support.polling import eventually
from tests.support.services import running_worker
from verimail_shared.jobs import Queue, deserialize_job, queue_key, queue_of_key, serialize_job
from verimail_shared.settings import Settings
from verimail_worker.weighted import WeightedWorker, current_queue_key


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


async def test_an_arq_client_reads_the_result_of_a_job_the_weighted_worker_ran(
    settings: Settings, redis: ArqRedis
) -> None:
    async def double(ctx: dict[str, Any], n: int) -> int:
        return 2 * n

    arq_client = ArqRedis.from_url(settings.redis_url)  # arq's own pickle encoding
    try:
        job = await arq_client.enqueue_job("double", 21, _queue_name=queue_key(Queue.DEFAULT))
        assert job is not None
        worker = WeightedWorker(
            functions=[func(double, name="double")],
            queues={queue_key(Queue.CRITICAL): 10, queue_key(Queue.DEFAULT): 5},
            redis_pool=arq_client,
            burst=True,
            handle_signals=False,
        )
        await worker.main()
        assert await job.result(timeout=5) == 42
        assert await job.status() == JobStatus.complete
        # The lease, the try counter, the job and its queue entry are gone, as arq leaves them.
        assert (
            await redis.exists(
                in_progress_key_prefix + job.job_id,
                retry_key_prefix + job.job_id,
                job_key_prefix + job.job_id,
            )
            == 0
        )
        assert await redis.zcard(queue_key(Queue.DEFAULT)) == 0
    finally:
        await arq_client.aclose()


async def test_a_burst_runs_every_queue_not_only_the_first(
    settings: Settings, redis: ArqRedis
) -> None:
    ran: list[str] = []

    async def record(ctx: dict[str, Any], payload: dict[str, Any]) -> None:
        ran.append(queue_of_key(current_queue_key()))

    await fill(redis, Queue.DEFAULT, 5)  # the first queue, critical, is empty
    worker = WeightedWorker(
        functions=[func(record, name="record")],
        queues={queue_key(Queue.CRITICAL): 10, queue_key(Queue.DEFAULT): 5},
        redis_pool=redis,
        job_serializer=serialize_job,
        job_deserializer=deserialize_job,
        burst=True,
        handle_signals=False,
    )
    await asyncio.wait_for(worker.main(), 30)
    assert ran == ["default"] * 5
    assert await redis.zcard(queue_key(Queue.DEFAULT)) == 0


async def test_a_burst_starts_no_more_than_max_burst_jobs(
    settings: Settings, redis: ArqRedis
) -> None:
    ran: list[str] = []

    async def record(ctx: dict[str, Any], payload: dict[str, Any]) -> None:
        ran.append(ctx["job_id"])

    await fill(redis, Queue.CRITICAL, 5)
    worker = WeightedWorker(
        functions=[func(record, name="record")],
        queues={queue_key(Queue.CRITICAL): 10, queue_key(Queue.DEFAULT): 5},
        redis_pool=redis,
        job_serializer=serialize_job,
        job_deserializer=deserialize_job,
        burst=True,
        max_burst_jobs=2,
        handle_signals=False,
    )
    await asyncio.wait_for(worker.main(), 30)
    assert len(ran) == 2
    assert await redis.zcard(queue_key(Queue.CRITICAL)) == 3


async def test_outcomes_still_unwritten_at_a_graceful_stop_are_written(
    settings: Settings, redis: ArqRedis
) -> None:
    async def noop(ctx: dict[str, Any], payload: dict[str, Any]) -> str:
        return "done"

    await fill(redis, Queue.CRITICAL, 20)
    worker = WeightedWorker(
        functions=[func(noop, name="record")],
        queues={queue_key(Queue.CRITICAL): 10},
        redis_pool=redis,
        job_serializer=serialize_job,
        job_deserializer=deserialize_job,
        handle_signals=False,
        poll_delay=0.05,
        max_jobs=20,  # one claim takes them all: no later claim carries outcomes along
    )
    worker.finishes.interval = 3600  # nothing is written until the stop
    main = asyncio.create_task(worker.main())
    try:
        await eventually(lambda: worker.jobs_complete == 20, timeout=30)
        assert await redis.zcard(queue_key(Queue.CRITICAL)) == 20  # finished, not yet recorded
    finally:
        await worker.close()
        main.cancel()
    assert await redis.zcard(queue_key(Queue.CRITICAL)) == 0
    assert len(await redis.keys(result_key_prefix + "*")) == 20
    assert await redis.keys(in_progress_key_prefix + "*") == []


async def test_every_lua_script_shipped_with_the_packages_compiles_in_redis(
    redis: ArqRedis,
) -> None:
    scripts = [
        *(files("verimail_worker") / "lua").iterdir(),
        *(files("verimail_shared") / "lua").iterdir(),
    ]
    assert {script.name for script in scripts} >= {
        "read_queues.lua",
        "claim_jobs.lua",
        "finish_jobs.lua",
        "count_queues.lua",
        "enqueue_job.lua",
    }
    for script in scripts:
        sha = await redis.script_load(script.read_text())
        assert (await redis.script_exists(sha)) == [True], script.name
