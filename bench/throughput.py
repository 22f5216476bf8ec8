"""Queue overhead: no-op tasks per second for one worker process, both sides in one invocation
against the same Redis and PostgreSQL.

    uv run python bench/throughput.py --count 20000 --runs 3

Sides: `ours` (VerimailWorker: weighted queues, wake-on-work, our task runner with metrics,
JSON logging and the outbox completion mark, as deployed), `arq-default` (bare arq 0.28:
poll_delay 0.5 s, max_jobs 10) and `arq-tuned` (bare arq, poll_delay 0.01 s). Each worker runs
in a process of its own; tables print medians, ratios are against `ours`, and the results are
written to bench/results/queue-throughput.json. The harness (servers, run loop, drain timer) is
bench/common.py's.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.worker import Worker, func

sys.path.insert(0, str(Path(__file__).parent))
from common import (
    DONE_KEY,
    Bench,
    drain_worker,
    interleaved,
    load_average,
    parser,
    print_load,
    print_ratio_table,
    write_results,
)

SIDES = ["ours", "arq-default", "arq-tuned"]


# ---------------------------------------------------------------- the worker side (a process)


async def noop_arq(ctx: dict[str, Any], *args: Any) -> None:
    await ctx["redis"].incr(DONE_KEY)


def run_worker(kind: str, redis_url: str) -> None:
    if kind == "ours":
        run_ours(redis_url)
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


def run_ours(redis_url: str) -> None:
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


async def throughput(bench: Bench, kind: str, count: int, profile: bool = False) -> float:
    from verimail_shared.jobs import deserialize_job, serialize_job

    redis = await create_pool(
        RedisSettings.from_dsn(bench.redis_url),
        job_serializer=serialize_job if kind == "ours" else None,
        job_deserializer=deserialize_job if kind == "ours" else None,
    )
    try:
        await redis.flushdb()
        await enqueue_many(redis, kind, count)
        return await drain_worker(bench, __file__, kind, count, redis, profile)
    finally:
        await redis.aclose()


def main() -> None:
    cli = parser(__doc__)
    cli.add_argument("--count", type=int, default=20000, help="no-op tasks per side and run")
    args = cli.parse_args()
    if args.command == "worker":
        logging.basicConfig(level=logging.WARNING)
        run_worker(args.kind, args.redis_url)
        return
    load = load_average()
    rates: dict[str, list[float]] = {side: [] for side in SIDES}
    with Bench.running(args.redis_url) as bench:
        for _, side in interleaved(SIDES, args.runs):
            rates[side].append(asyncio.run(throughput(bench, side, args.count)))
    medians = print_ratio_table(rates, reference="ours")
    print_load("at the start", load)
    write_results(
        "queue-throughput",
        {"count": args.count, "load_average": load, "runs": rates, "medians": medians},
    )


if __name__ == "__main__":
    main()
