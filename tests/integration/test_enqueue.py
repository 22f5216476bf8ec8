"""`queue.enqueue`: arq's `enqueue_job` in one script call, read back by arq's own `Job`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from arq.connections import ArqRedis
from arq.constants import expires_extra_ms, job_key_prefix, result_key_prefix
from arq.jobs import Job, JobStatus
from redis.asyncio.client import PubSub

from tests.support.polling import eventually
from tests.support.sentinel import MASTER_NAME, SentinelCluster, redis_command
from verimail_shared import queue
from verimail_shared.jobs import (
    WAKEUP_CHANNEL,
    Queue,
    SendVerifyEmailPayload,
    TaskName,
    deserialize_job,
    queue_key,
)
from verimail_shared.settings import Settings

TASK = TaskName.SEND_VERIFY_EMAIL
QUEUE = queue_key(Queue.CRITICAL)
PAYLOAD = SendVerifyEmailPayload(username="ada", max_tries=3, request_id="r-1")


@pytest.fixture
async def wakeups(redis: ArqRedis) -> AsyncIterator[PubSub]:
    pubsub = redis.pubsub()
    await pubsub.subscribe(WAKEUP_CHANNEL)
    await pubsub.get_message(timeout=1)  # the subscription's confirmation
    yield pubsub
    await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves PubSub.aclose unannotated


async def published(pubsub: PubSub) -> list[bytes]:
    """The wake-up messages received within a short wait."""
    messages = []
    while (message := await pubsub.get_message(timeout=0.2)) is not None:
        messages.append(message["data"])
    return messages


async def test_the_job_is_what_arqs_enqueue_job_writes(redis: ArqRedis) -> None:
    await redis.enqueue_job(
        TASK, PAYLOAD.model_dump(mode="json"), _job_id="by-arq", _queue_name=QUEUE
    )
    assert await queue.enqueue(redis, TASK, PAYLOAD, job_id="ours")

    theirs = deserialize_job(await redis.get(job_key_prefix + "by-arq"))
    ours = deserialize_job(await redis.get(job_key_prefix + "ours"))
    assert ours.keys() == theirs.keys() == {"t", "f", "a", "k", "et"}
    assert {**ours, "et": 0} == {**theirs, "et": 0}
    # Due when enqueued, kept for arq's default expiry.
    assert await redis.zscore(QUEUE, "ours") == ours["et"]
    assert expires_extra_ms - 5000 < await redis.pttl(job_key_prefix + "ours") <= expires_extra_ms


async def test_an_arq_job_reads_the_jobs_info_and_status(redis: ArqRedis) -> None:
    await queue.enqueue(redis, TASK, PAYLOAD, job_id="j1")

    job = Job("j1", redis, _queue_name=QUEUE, _deserializer=redis.job_deserializer)
    assert await job.status() == JobStatus.queued
    info = await job.info()
    assert info is not None
    assert info.function == TASK
    assert list(info.args) == [PAYLOAD.model_dump(mode="json")]  # a JSON array
    assert info.kwargs == {}
    assert info.job_try is None
    assert info.score == int(info.enqueue_time.timestamp() * 1000)


async def test_defer_by_puts_the_due_time_in_the_score_and_lengthens_the_expiry(
    redis: ArqRedis,
) -> None:
    assert await queue.enqueue(redis, TASK, PAYLOAD, job_id="later", defer_by=12.3456)

    job = Job("later", redis, _queue_name=QUEUE, _deserializer=redis.job_deserializer)
    assert await job.status() == JobStatus.deferred
    enqueued_ms = deserialize_job(await redis.get(job_key_prefix + "later"))["et"]
    assert await redis.zscore(QUEUE, "later") == enqueued_ms + 12346  # rounded, as arq does
    ttl = await redis.pttl(job_key_prefix + "later")
    assert expires_extra_ms + 12346 - 5000 < ttl <= expires_extra_ms + 12346


async def test_a_duplicate_job_id_enqueues_nothing_and_wakes_no_one(
    redis: ArqRedis, wakeups: PubSub
) -> None:
    assert await queue.enqueue(redis, TASK, PAYLOAD, job_id="once")
    first = await redis.get(job_key_prefix + "once")
    score = await redis.zscore(QUEUE, "once")
    assert await published(wakeups) == [Queue.CRITICAL.value.encode()]

    other = SendVerifyEmailPayload(username="bob", max_tries=1)
    assert not await queue.enqueue(redis, TASK, other, job_id="once", defer_by=60)
    assert await redis.get(job_key_prefix + "once") == first
    assert await redis.zscore(QUEUE, "once") == score
    assert await redis.zcard(QUEUE) == 1
    assert await published(wakeups) == []


async def test_a_job_id_with_a_result_enqueues_nothing(redis: ArqRedis) -> None:
    await redis.set(result_key_prefix + "done", b"{}")

    assert not await queue.enqueue(redis, TASK, PAYLOAD, job_id="done")
    assert await redis.exists(job_key_prefix + "done") == 0
    assert await redis.zcard(QUEUE) == 0


async def test_concurrent_enqueues_of_one_id_add_it_once(redis: ArqRedis) -> None:
    added = await asyncio.gather(
        *(queue.enqueue(redis, TASK, PAYLOAD, job_id="race") for _ in range(20))
    )
    assert sorted(added) == [False] * 19 + [True]
    assert await redis.zcard(QUEUE) == 1


async def test_the_script_is_loaded_again_after_the_server_forgets_it(redis: ArqRedis) -> None:
    assert await queue.enqueue(redis, TASK, PAYLOAD, job_id="before")
    await redis.script_flush()  # as after a restart or a failover to a server without it

    assert await queue.enqueue(redis, TASK, PAYLOAD, job_id="after")
    assert await redis.zcard(QUEUE) == 2


async def test_through_sentinels_the_job_lands_on_the_master(
    settings: Settings, tmp_path: Path
) -> None:
    cluster = SentinelCluster(tmp_path)
    cluster.start()
    try:
        await eventually(cluster.sentinels_ready, timeout=30)
        sentinel_settings = settings.model_copy(
            update={
                "redis_url": "redis://127.0.0.1/0",
                "redis_sentinels": [("127.0.0.1", port) for port in cluster.sentinel_ports],
                "redis_sentinel_master": MASTER_NAME,
            }
        )
        redis = queue.connect(sentinel_settings)
        try:
            assert await queue.enqueue(redis, TASK, PAYLOAD, job_id="via-sentinel")
        finally:
            await redis.aclose()
        assert redis_command(cluster.master_port, "ZCARD", QUEUE) == ":1"
        assert redis_command(cluster.master_port, "EXISTS", job_key_prefix + "via-sentinel") == ":1"
    finally:
        cluster.stop()
