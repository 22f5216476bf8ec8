"""Memory: bytes per queued job in Redis and worker RSS, ours against bare arq, in one run.

    uv run --frozen --group bench python bench/memory.py --count 100000 --jobs 10000 --runs 3

Bytes per job: Redis `used_memory` after `count` deferred jobs minus before, over `count`. Ours
are made as the API makes them (an outbox row from `outbox.new_task` for `send_verify_email`,
enqueued with `outbox.enqueue`: JSON serializer, uuid job id, payload with a request id); bare
arq gets the same payload as keyword arguments through `enqueue_job`, pickled as arq does by
default. Only one connection is open when memory is read, so client buffers cancel out.

Worker RSS: the worker process idle, then after it has run `jobs` no-op jobs; ours is the
deployed worker (`create_worker`, as bench/throughput.py runs it), bare arq runs its defaults.
Sides alternate within each run; tables print medians and ours ÷ side, and the results are
written to bench/results/memory.json.

The server must allocate with jemalloc, as Redis and Valkey ship (decision 054): the embedded
Valkey's libc malloc hands a value a larger freed chunk depending on what ran before, so
its bytes per job move with the heap's history (a Lua script's strings moved 4 job keys in 10
into the next size). The bench starts redis-server from PATH when the embedded server is not
jemalloc, and refuses a --redis-url that is not.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import string
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from arq.connections import ArqRedis, RedisSettings, create_pool
from redis.asyncio import Redis

from verimail_shared import outbox, queue
from verimail_shared.jobs import (
    SendVerifyEmailPayload,
    TaskName,
    deserialize_job,
    serialize_job,
)
from verimail_shared.settings import Settings

sys.path.insert(0, str(Path(__file__).parent))
from common import (
    DONE_KEY,
    Bench,
    interleaved,
    load_average,
    parser,
    print_load,
    stop,
    write_results,
)
from lateness import SETTLE_SECONDS, wait_for_worker
from throughput import enqueue_many

SIDES = ["ours", "arq"]
WORKER_KIND = {"ours": "ours", "arq": "arq-default"}  # bench/throughput.py's worker sides
BATCH = 500
# Due well after the measurement: every job is still deferred when memory is read.
DEFER_SECONDS = 3600.0
MIB = 1024 * 1024


# ---------------------------------------------------------------- bytes per queued job


async def used_memory(admin: Redis) -> int:
    """Redis's allocated bytes once every other client has gone (their buffers count too)."""
    deadline = time.monotonic() + 10
    while (await admin.info("clients"))["connected_clients"] > 1:
        if time.monotonic() > deadline:
            raise RuntimeError("other clients stay connected; memory would include them")
        await asyncio.sleep(0.05)
    return int((await admin.info("memory"))["used_memory"])


async def flush(admin: Redis) -> None:
    """Empty the database and free its memory before returning: a plain FLUSHDB frees it in the
    background on Valkey 8 and later (`lazyfree-lazy-user-flush yes`), and `used_memory` read
    meanwhile still counted part of the previous side's jobs."""
    await admin.execute_command("FLUSHDB", "SYNC")  # type: ignore[no-untyped-call]


def usernames(seed: int, count: int) -> list[str]:
    """Realistic, varied usernames; the same seed gives both sides the same ones."""
    rng = random.Random(seed)
    alphabet = string.ascii_lowercase + string.digits + "_"
    return ["".join(rng.choices(alphabet, k=rng.randint(5, 20))) for _ in range(count)]


async def enqueue_ours(settings: Settings, names: list[str]) -> None:
    redis = queue.connect(settings)
    try:
        for start in range(0, len(names), BATCH):
            rows = [
                outbox.new_task(
                    TaskName.SEND_VERIFY_EMAIL,
                    SendVerifyEmailPayload(
                        username=name,
                        max_tries=settings.verify_email_max_tries,
                        request_id=uuid.uuid4().hex,  # what the API's middleware makes
                    ),
                    DEFER_SECONDS,
                )
                for name in names[start : start + BATCH]
            ]
            await asyncio.gather(*(outbox.enqueue(redis, row) for row in rows))
    finally:
        # connect() builds the client on a pool of its own making, which aclose() leaves open.
        await redis.aclose(close_connection_pool=True)


async def enqueue_arq(settings: Settings, names: list[str]) -> None:
    redis: ArqRedis = await create_pool(RedisSettings.from_dsn(settings.redis_url))
    try:
        for start in range(0, len(names), BATCH):
            due = datetime.now(UTC) + timedelta(seconds=DEFER_SECONDS)
            await asyncio.gather(
                *(
                    redis.enqueue_job(
                        "send_verify_email",
                        username=name,
                        max_tries=settings.verify_email_max_tries,
                        request_id=uuid.uuid4().hex,
                        _job_id=uuid.uuid4().hex,
                        _defer_until=due,
                    )
                    for name in names[start : start + BATCH]
                )
            )
    finally:
        await redis.aclose()


async def job_value_bytes(admin: Redis, sample: int = 200) -> float:
    """The mean length of a job's serialized value, the one part of a job the sides differ in."""
    keys = [key async for key in admin.scan_iter(match="arq:job:*", count=sample)][:sample]
    async with admin.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.strlen(key)
        lengths = await pipe.execute()
    return float(statistics.mean(lengths))


async def bytes_per_job(bench: Bench, side: str, names: list[str]) -> tuple[float, float]:
    """Redis bytes per queued job, and the mean serialized job's length."""
    settings: Settings = bench.settings()
    admin = Redis.from_url(settings.redis_url)
    try:
        await flush(admin)
        before = await used_memory(admin)
        await (enqueue_ours if side == "ours" else enqueue_arq)(settings, names)
        after = await used_memory(admin)
        queued = await admin.zcard("arq:queue:critical" if side == "ours" else "arq:queue")
        if queued != len(names):
            raise RuntimeError(f"{side}: {queued} jobs queued, expected {len(names)}")
        value = await job_value_bytes(admin)
        await flush(admin)
    finally:
        await admin.aclose()
    return (after - before) / len(names), value


# ---------------------------------------------------------------- worker RSS


async def worker_rss(bench: Bench, side: str, jobs: int) -> tuple[int, int]:
    """The worker's resident bytes once idle, and after running `jobs` no-op jobs."""
    kind = WORKER_KIND[side]
    redis: ArqRedis = await create_pool(
        RedisSettings.from_dsn(bench.redis_url),
        job_serializer=serialize_job if side == "ours" else None,
        job_deserializer=deserialize_job if side == "ours" else None,
    )
    await redis.flushdb()
    worker = bench.spawn_worker(str(Path(__file__).with_name("throughput.py")), kind)
    try:
        await wait_for_worker(redis, worker)
        await asyncio.sleep(SETTLE_SECONDS)
        process = psutil.Process(worker.pid)
        idle = process.memory_info().rss
        await enqueue_many(redis, kind, jobs)
        deadline = time.monotonic() + 600
        while int(await redis.get(DONE_KEY) or 0) < jobs:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{side}: the worker did not finish {jobs} jobs")
            await asyncio.sleep(0.05)
        await asyncio.sleep(SETTLE_SECONDS)
        busy = process.memory_info().rss
    finally:
        stop(worker)
        await redis.aclose()
    return idle, busy


# ---------------------------------------------------------------- the driver


def report(runs: dict[str, list[dict[str, float]]], count: int, jobs: int) -> dict[str, Any]:
    columns = [
        ("bytes_per_job", f"bytes/job ({count:,} deferred)", 1.0),
        ("job_value_bytes", "serialized job bytes", 1.0),
        ("idle_rss", "idle RSS MiB", MIB),
        ("busy_rss", f"RSS after {jobs:,} jobs MiB", MIB),
    ]
    medians = {
        side: {name: statistics.median(run[name] for run in side_runs) for name, _, _ in columns}
        for side, side_runs in runs.items()
    }
    for name, title, unit in columns:
        print(f"{'side':<6} {title:>28} {'ours ÷ side':>12}  runs")
        for side in SIDES:
            values = ", ".join(f"{run[name] / unit:.1f}" for run in runs[side])
            print(
                f"{side:<6} {medians[side][name] / unit:>28.1f} "
                f"{medians['ours'][name] / medians[side][name]:>12.3f}  {values}"
            )
        print()
    return medians


def main() -> None:
    cli = parser(__doc__, workers=())
    cli.add_argument("--count", type=int, default=100_000, help="deferred jobs in Redis")
    cli.add_argument("--jobs", type=int, default=10_000, help="jobs each worker runs")
    args = cli.parse_args()
    runs: dict[str, list[dict[str, float]]] = {side: [] for side in SIDES}
    load = load_average()
    with Bench.running(args.redis_url, jemalloc=True) as bench:
        server = bench.redis_version
        print(f"{server} at {bench.redis_url}")
        # Alternate which side goes first, so neither always meets a warmer server.
        for run, side in interleaved(SIDES, args.runs, alternate=True):
            per_job, value = asyncio.run(bytes_per_job(bench, side, usernames(run, args.count)))
            idle, busy = asyncio.run(worker_rss(bench, side, args.jobs))
            runs[side].append(
                {
                    "bytes_per_job": per_job,
                    "job_value_bytes": value,
                    "idle_rss": idle,
                    "busy_rss": busy,
                }
            )
    medians = report(runs, args.count, args.jobs)
    print_load("at the start", load)
    write_results(
        "memory",
        {
            "server": server,
            "count": args.count,
            "jobs": args.jobs,
            "load_average": load,
            "runs": runs,
            "medians": medians,
        },
    )


if __name__ == "__main__":
    main()
