"""Deferred-task lateness: start time minus due time, ours against bare arq, both in one run.

    uv run python bench/lateness.py --count 2000 --rate 200

Tasks are enqueued at a steady `rate`, each deferred by 0.2 to 0.7 s to a known due time; the task
records how late it started. Sides as in bench/throughput.py. Prints p50/p99/max per side and
writes bench/results/queue-lateness.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.worker import Worker, func

sys.path.insert(0, str(Path(__file__).parent))
from throughput import RESULTS, SIDES, Bench

LATE_KEY = "bench:lateness"


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


async def measure(bench: Bench, kind: str, count: int, rate: float) -> list[float]:
    from verimail_shared import queue
    from verimail_shared.jobs import TaskName, deserialize_job, serialize_job

    redis: ArqRedis = await create_pool(
        RedisSettings.from_dsn(bench.redis_server.url),
        job_serializer=serialize_job if kind == "ours" else None,
        job_deserializer=deserialize_job if kind == "ours" else None,
    )
    await redis.flushdb()
    env_worker = subprocess.Popen(
        [sys.executable, __file__, "worker", "--kind", kind, "--redis", bench.redis_server.url],
        env={
            **os.environ,
            "DATABASE_URL": bench.database_url,
            "REDIS_URL": bench.redis_server.url,
            "LOG_LEVEL": "WARNING",
            "WORKER_METRICS_PORT": "0",
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    await asyncio.sleep(2)  # the worker is up and idle before the first task
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
                defer_until=due,
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
    env_worker.terminate()
    env_worker.wait(30)
    await redis.aclose()
    return sorted(lateness)


def percentile(values: list[float], p: float) -> float:
    return values[min(int(p * len(values)), len(values) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", nargs="?", default="run", choices=["run", "worker"])
    parser.add_argument("--kind", choices=SIDES)
    parser.add_argument("--redis")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=200)
    args = parser.parse_args()
    if args.command == "worker":
        run_worker(args.kind, args.redis)
        return
    with tempfile.TemporaryDirectory(prefix="verimail-bench-") as tmp:
        bench = Bench(Path(tmp))
        bench.start()
        try:
            results = {
                side: asyncio.run(measure(bench, side, args.count, args.rate)) for side in SIDES
            }
        finally:
            bench.stop()
    table = {
        side: {"p50_ms": percentile(v, 0.5), "p99_ms": percentile(v, 0.99), "max_ms": v[-1]}
        for side, v in results.items()
    }
    print(f"{'side':<12} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for side, row in table.items():
        print(f"{side:<12} {row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f} {row['max_ms']:>8.1f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "queue-lateness.json").write_text(
        json.dumps({"count": args.count, "rate": args.rate, "table": table}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
