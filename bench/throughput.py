"""Queue overhead: no-op tasks per second for one worker process, both sides in one invocation
against the same Redis and PostgreSQL.

    uv run python bench/throughput.py throughput --count 20000 --runs 3

Sides: `ours` (VerimailWorker: weighted queues, wake-on-work, our task runner with metrics,
JSON logging and the outbox completion mark, as deployed), `arq-default` (bare arq 0.28:
poll_delay 0.5 s, max_jobs 10) and `arq-tuned` (bare arq, poll_delay 0.01 s). Each worker runs
in a process of its own; tables print medians, ratios are against `ours`, and the results are
written to bench/results/queue-throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.worker import Worker, func

sys.path.insert(0, str(Path(__file__).parent))
from common import drain_rate, print_ratio_table

RESULTS = Path(__file__).parent / "results"
SIDES = ["ours", "arq-default", "arq-tuned"]
DONE_KEY = "bench:done"


# ---------------------------------------------------------------- the worker side (a process)


async def noop_arq(ctx: dict[str, Any], *args: Any) -> None:
    await ctx["redis"].incr(DONE_KEY)


def run_worker(kind: str, mode: str, redis_url: str) -> None:
    if kind == "ours":
        run_ours(mode, redis_url)
        return
    poll = 0.5 if kind == "arq-default" else 0.01
    Worker(
        functions=[func(noop_arq, name="bench")],
        redis_settings=RedisSettings.from_dsn(redis_url),
        queue_name="arq:queue:critical",
        poll_delay=poll,
        handle_signals=True,
        log_results=False,
    ).run()


def run_ours(mode: str, redis_url: str) -> None:
    from verimail_shared.jobs import TaskName
    from verimail_shared.logs import configure_logging
    from verimail_shared.settings import get_settings
    from verimail_worker.runner import task_function
    from verimail_worker.tasks import Deps, Job
    from verimail_worker.worker import create_worker

    settings = get_settings()
    configure_logging(settings)

    async def handler(deps: Deps, payload: Any, job: Job) -> None:
        await worker.pool.incr(DONE_KEY)

    worker = create_worker(
        settings,
        functions=[task_function(TaskName.SEND_VERIFY_EMAIL, handler, 30)],
    )
    worker.run()


# ---------------------------------------------------------------- the driver


class Bench:
    def __init__(self, root: Path) -> None:
        from verimail_shared.embedded import EmbeddedPostgres, EmbeddedRedis

        self.postgres = EmbeddedPostgres(root / "postgres")
        self.redis_server = EmbeddedRedis(root / "redis", appendonly=False)
        self.root = root

    def start(self) -> None:
        from verimail_shared.migrate import upgrade
        from verimail_shared.settings import Settings

        self.postgres.start()
        self.redis_server.start()
        self.database_url = self.postgres.create_database("bench")
        upgrade(Settings(_env_file=None, database_url=self.database_url))  # type: ignore[call-arg]

    def stop(self) -> None:
        self.redis_server.stop()
        self.postgres.stop()

    def spawn(self, kind: str, mode: str) -> subprocess.Popen[bytes]:
        env = {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_server.url,
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
            "WORKER_METRICS_PORT": "0",
        }
        log = (self.root / f"{kind}-{mode}.log").open("ab")
        return subprocess.Popen(
            [
                sys.executable,
                __file__,
                "worker",
                "--kind",
                kind,
                "--mode",
                mode,
                "--redis",
                self.redis_server.url,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def enqueue_many(redis: ArqRedis, kind: str, count: int) -> None:
    from verimail_shared import queue
    from verimail_shared.jobs import TaskName

    for start in range(0, count, 500):
        batch = range(start, min(start + 500, count))
        if kind == "ours":
            await asyncio.gather(
                *(
                    queue.enqueue(
                        redis,
                        TaskName.SEND_VERIFY_EMAIL,
                        {"username": f"u{n}", "max_tries": 1},
                        job_id=f"bench-{n}",
                    )
                    for n in batch
                )
            )
        else:
            await asyncio.gather(
                *(
                    redis.enqueue_job(
                        "bench", _job_id=f"bench-{n}", _queue_name="arq:queue:critical"
                    )
                    for n in batch
                )
            )


async def throughput(bench: Bench, kind: str, count: int) -> float:
    from verimail_shared.jobs import deserialize_job, serialize_job

    redis = await create_pool(
        RedisSettings.from_dsn(bench.redis_server.url),
        job_serializer=serialize_job if kind == "ours" else None,
        job_deserializer=deserialize_job if kind == "ours" else None,
    )
    await redis.flushdb()
    await enqueue_many(redis, kind, count)
    worker = bench.spawn(kind, "throughput")
    try:
        return await drain_rate(redis, DONE_KEY, count, worker)
    finally:
        worker.terminate()
        worker.wait(30)
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker")
    worker.add_argument("--kind", choices=SIDES)
    worker.add_argument("--mode", choices=["throughput"])
    worker.add_argument("--redis")
    tp = sub.add_parser("throughput")
    tp.add_argument("--count", type=int, default=20000)
    tp.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.command == "worker":
        logging.basicConfig(level=logging.WARNING)
        run_worker(args.kind, args.mode, args.redis)
        return
    with tempfile.TemporaryDirectory(prefix="verimail-bench-") as tmp:
        bench = Bench(Path(tmp))
        bench.start()
        try:
            rates: dict[str, list[float]] = {side: [] for side in SIDES}
            for _ in range(args.runs):
                for side in SIDES:  # interleaved, so load on the machine hits every side
                    rates[side].append(asyncio.run(throughput(bench, side, args.count)))
        finally:
            bench.stop()
    medians = print_ratio_table(rates, reference="ours")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "queue-throughput.json").write_text(
        json.dumps({"count": args.count, "runs": rates, "medians": medians}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
