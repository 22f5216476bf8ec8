"""Deferred-task lateness and idle Redis traffic, ours against bare arq, all sides in one run.

    uv run python bench/lateness.py --count 2000 --rate 200 --idle-seconds 30 --runs 3

Each worker is first left idle for `idle-seconds`: Redis's `total_commands_processed` is read
at both ends, less what the reading itself costs (measured before the worker starts), and
`INFO commandstats` says which commands they were. Then tasks are enqueued at a steady `rate`,
each deferred by 0.2 to 0.7 s to a known due time; the task records how late it started. Sides
as in bench/throughput.py, interleaved over runs. Prints medians over runs of p50/p99/max
lateness and idle commands per second, with ours ÷ side, and writes
bench/results/queue-lateness.json.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.worker import Worker, func

sys.path.insert(0, str(Path(__file__).parent))
from common import Bench, interleaved, load_average, parser, print_load, stop, write_results
from throughput import SIDES

LATE_KEY = "bench:lateness"
SETTLE_SECONDS = 2.0


async def late_arq(ctx: dict[str, Any], due_ms: float) -> None:
    await ctx["redis"].rpush(LATE_KEY, time.time() * 1000 - due_ms)


def run_worker(kind: str, redis_url: str) -> None:
    if kind != "ours":
        Worker(
            functions=[func(late_arq, name="bench")],
            redis_settings=RedisSettings.from_dsn(redis_url),
            queue_name="arq:queue:critical",
            poll_delay=0.5 if kind == "arq-default" else 0.01,
            log_results=False,
        ).run()
        return
    from verimail_shared.jobs import TaskName
    from verimail_shared.logs import configure_logging
    from verimail_shared.settings import get_settings
    from verimail_worker.runner import task_function
    from verimail_worker.tasks import Deps, Job
    from verimail_worker.worker import create_worker

    settings = get_settings()
    configure_logging(settings)

    async def handler(deps: Deps, payload: Any, job: Job) -> None:
        due_ms = float(payload.request_id)  # the bench carries the due time there
        await worker.pool.rpush(LATE_KEY, time.time() * 1000 - due_ms)

    worker = create_worker(
        settings, functions=[task_function(TaskName.SEND_VERIFY_EMAIL, handler, 30)]
    )
    worker.run()


async def wait_for_worker(redis: ArqRedis, worker: subprocess.Popen[bytes]) -> None:
    """Until the worker has polled once: every side writes its health key on its first poll."""
    deadline = time.monotonic() + 60
    while not [key async for key in redis.scan_iter(match="*health*")]:
        if time.monotonic() > deadline or worker.poll() is not None:
            raise RuntimeError("the worker did not start")
        await asyncio.sleep(0.05)


async def command_counts(redis: ArqRedis) -> Counter[str]:
    """Commands Redis has run so far: `total`, and per command name."""
    total = (await redis.info("stats"))["total_commands_processed"]
    per_command = await redis.info("commandstats")
    counts = Counter(
        {name.removeprefix("cmdstat_"): row["calls"] for name, row in per_command.items()}
    )
    counts["total"] = total
    return counts


async def commands_during(redis: ArqRedis, seconds: float) -> Counter[str]:
    before = await command_counts(redis)
    await asyncio.sleep(seconds)
    after = await command_counts(redis)
    after.subtract(before)
    return after


async def idle_commands(
    redis: ArqRedis, seconds: float, reading: Counter[str]
) -> tuple[float, dict[str, int]]:
    """Commands per second with only the idle worker connected, and how many of each, less
    `reading`: what measuring costs on its own."""
    counts = await commands_during(redis, seconds)
    counts.subtract(reading)
    per_command = {name: n for name, n in counts.most_common() if n > 0 and name != "total"}
    return counts["total"] / seconds, per_command


async def measure(
    bench: Bench, kind: str, count: int, rate: float, idle_seconds: float
) -> dict[str, Any]:
    from verimail_shared import queue
    from verimail_shared.jobs import TaskName, deserialize_job, serialize_job

    redis: ArqRedis = await create_pool(
        RedisSettings.from_dsn(bench.redis_url),
        job_serializer=serialize_job if kind == "ours" else None,
        job_deserializer=deserialize_job if kind == "ours" else None,
    )
    await redis.flushdb()
    reading = await commands_during(redis, 0.5)  # no worker yet: only the reading itself
    env_worker = bench.spawn_worker(__file__, kind, bench.env(LOG_LEVEL="WARNING"))
    await wait_for_worker(redis, env_worker)
    await asyncio.sleep(SETTLE_SECONDS)  # past start-up: connections, script loads, subscription
    idle_rate, idle_per_command = await idle_commands(redis, idle_seconds, reading)
    rng = random.Random(7)
    for n in range(count):
        due_ms = time.time() * 1000 + rng.uniform(200, 700)
        due = datetime.fromtimestamp(due_ms / 1000, UTC)
        if kind == "ours":
            await queue.enqueue(
                redis,
                TaskName.SEND_VERIFY_EMAIL,
                {"username": "u", "max_tries": 1, "request_id": repr(due_ms)},
                job_id=f"late-{n}",
                defer_by=due_ms / 1000 - time.time(),
            )
        else:
            await redis.enqueue_job(
                "bench",
                due_ms,
                _job_id=f"late-{n}",
                _queue_name="arq:queue:critical",
                _defer_until=due,
            )
        await asyncio.sleep(1 / rate)
    while await redis.llen(LATE_KEY) < count:
        await asyncio.sleep(0.05)
    lateness = [float(v) for v in await redis.lrange(LATE_KEY, 0, -1)]
    stop(env_worker)
    await redis.aclose()
    lateness.sort()
    return {
        "p50_ms": percentile(lateness, 0.5),
        "p99_ms": percentile(lateness, 0.99),
        "max_ms": lateness[-1],
        "idle_commands_per_s": idle_rate,
        "idle_commands": idle_per_command,
    }


def percentile(values: list[float], p: float) -> float:
    return values[min(int(p * len(values)), len(values) - 1)]


COLUMNS = ["p50_ms", "p99_ms", "max_ms", "idle_commands_per_s"]


def main() -> None:
    cli = parser(__doc__)
    cli.add_argument("--count", type=int, default=2000)
    cli.add_argument("--rate", type=float, default=200)
    cli.add_argument("--idle-seconds", type=float, default=30)
    args = cli.parse_args()
    if args.command == "worker":
        run_worker(args.kind, args.redis_url)
        return
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    load = load_average()
    with Bench.running(args.redis_url) as bench:
        for _, side in interleaved(SIDES, args.runs):
            runs[side].append(
                asyncio.run(measure(bench, side, args.count, args.rate, args.idle_seconds))
            )
    table = {
        side: {column: statistics.median(run[column] for run in side_runs) for column in COLUMNS}
        for side, side_runs in runs.items()
    }
    ours_idle = table["ours"]["idle_commands_per_s"]
    print(
        f"{'side':<12} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'idle cmd/s':>11} "
        f"{'ours ÷ side':>12}"
    )
    for side, row in table.items():
        ratio = ours_idle / row["idle_commands_per_s"] if row["idle_commands_per_s"] else 0.0
        print(
            f"{side:<12} {row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f} {row['max_ms']:>8.1f} "
            f"{row['idle_commands_per_s']:>11.2f} {ratio:>12.2f}"
        )
    print(f"idle commands in {args.idle_seconds:g} s, median run:")
    for side, side_runs in runs.items():
        middle = sorted(side_runs, key=lambda run: run["idle_commands_per_s"])[len(side_runs) // 2]
        print(
            f"  {side:<12} "
            + ", ".join(f"{n} {name}" for name, n in middle["idle_commands"].items())
        )
    print_load("at the start", load)
    write_results(
        "queue-lateness",
        {
            "count": args.count,
            "rate": args.rate,
            "idle_seconds": args.idle_seconds,
            "load_average": load,
            "table": table,
            "runs": runs,
        },
    )


if __name__ == "__main__":
    main()
