"""Peers: the no-op workload of bench/throughput.py through SAQ, Celery, RQ, taskiq-redis, streaq
and dramatiq, each in one worker process with its documented fastest settings, against ours.

    uv run --frozen --group bench python bench/peers.py --count 20000 --runs 3
    uv run --frozen --group bench python bench/peers.py --runs 1 --profile   # py-spy, each side

Every side runs against one Redis 7+ server in the same invocation (streaq needs Redis streams
of Redis 7): `--redis-url` names one, else the harness (bench/common.py) starts a throwaway one.

As in bench/throughput.py: `count` tasks are enqueued up front, then one worker process drains
them and each task increments a counter in Redis; the rate runs from the first completion to the
last. `ours` is measured by bench/throughput.py's own function (VerimailWorker as deployed).
Sides are interleaved within each run against the same Redis and PostgreSQL; the table prints
medians and ours ÷ side, and the results go to bench/results/peers.json. Each peer's settings
are in its `run_*` function with the document they come from. With `--profile`, py-spy samples
each worker process through one more run and prints where its CPU went per task (speedscope
files in bench/results/profiles/). Needs the `bench` dependency group.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

sys.path.insert(0, str(Path(__file__).parent))
import common
from throughput import throughput

PEERS = ["saq", "celery", "rq", "taskiq", "streaq", "dramatiq"]
SIDES = ["ours", *PEERS]
QUEUE = "bench"
TASK = "bench"
BATCH = 500

# SAQ documents one throughput knob, `concurrency`, and uses 10 in its README and its own benchmark
# (docs/benchmarks.md); 20, 50 and 100 were no faster in a sweep here.
SAQ_CONCURRENCY = 10
# taskiq's docs/guide/cli.md: --max-async-tasks (default 100) and --max-prefetch, "useful for
# systems with high message rates", so it may prefetch as many as it may run at once.
TASKIQ_MAX_ASYNC_TASKS = 100
TASKIQ_MAX_PREFETCH = 100
# Celery's optimizing guide (Prefetch Limits): many short tasks want a large multiplier, "Say 64,
# or 128".
CELERY_PREFETCH_MULTIPLIER = 128
# streaq's benchmarks/README.md (and bench_streaq.py): Worker(concurrency=32), run as
# `streaq --burst --workers 1 bench_streaq.worker`, that is with the CLI's INFO log config.
STREAQ_CONCURRENCY = 32
# dramatiq's benchmarks/bench.py runs `dramatiq bench -p 8` with the CLI's default --threads 8;
# one process here, so one Worker with those 8 threads (what each CLI process starts).
DRAMATIQ_THREADS = 8

# The worker process's client for the completion counter: sync for Celery and RQ, async otherwise.
counter: Any = None


# ---------------------------------------------------------------- the tasks (in the worker)


def noop_sync() -> None:
    counter.incr(common.DONE_KEY)


async def noop_async(*args: Any) -> None:
    await counter.incr(common.DONE_KEY)


# ---------------------------------------------------------------- the workers (one process each)


def run_saq(redis_url: str) -> None:
    """SAQ 0.26 as `saq.worker.start` runs it; jobs carry ttl=-1 (see `enqueue_saq`)."""
    from saq import Queue, Worker

    worker = Worker(
        Queue.from_url(redis_url, name=QUEUE),
        functions=[(TASK, noop_async)],
        concurrency=SAQ_CONCURRENCY,
    )

    async def serve() -> None:
        await worker.queue.connect()
        try:
            await worker.start()
        finally:
            await worker.queue.disconnect()

    asyncio.run(serve())


def celery_app(redis_url: str) -> Any:
    from celery import Celery

    app = Celery("bench", broker=redis_url)
    app.conf.update(
        # Tasks guide, Tips and Best Practices: ignore results you don't want ("storing results
        # wastes time and resources") and disable rate limits if they're not used.
        task_ignore_result=True,
        worker_disable_rate_limits=True,
        worker_prefetch_multiplier=CELERY_PREFETCH_MULTIPLIER,
        broker_connection_retry_on_startup=True,
        task_default_queue=QUEUE,
    )
    app.task(name=TASK)(noop_sync)
    return app


def run_celery(redis_url: str) -> None:
    """Celery 5.6 with the Redis broker in one process."""
    celery_app(redis_url).worker_main(
        [
            "worker",
            # celery.concurrency.solo: "Solo task pool (blocking, inline, fast)"; the only pool
            # that runs tasks in the worker process itself.
            "--pool=solo",
            # Worker CLI: no event subscriptions, start-up sync or heartbeats through the broker.
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--loglevel=WARNING",
        ]
    )


def run_rq(redis_url: str) -> None:
    """RQ 3.0; jobs carry result_ttl=0 (see `enqueue_rq`)."""
    from rq import Queue, SimpleWorker

    connection = Redis.from_url(redis_url)
    # docs/benchmark.md: SimpleWorker skips fork() per job, about 6x the default Worker on no-ops;
    # workers.md: --disable-job-desc-logging turns off the per-job description log.
    SimpleWorker(
        [Queue(QUEUE, connection=connection)], connection=connection, log_job_description=False
    ).work(logging_level="WARNING")


def taskiq_broker(redis_url: str) -> Any:
    from taskiq_redis import ListQueueBroker

    # taskiq-redis README: ListQueueBroker is LPUSH/BRPOP without acknowledgements, the least
    # work per task of its brokers; no result backend is configured, so no results are stored.
    broker = ListQueueBroker(redis_url, queue_name=QUEUE)
    broker.register_task(noop_async, task_name=TASK)
    return broker


def run_taskiq(redis_url: str) -> None:
    """taskiq 0.13 through the function each `taskiq worker` child process runs (uvloop and all)."""
    from taskiq.acks import AcknowledgeType
    from taskiq.cli.worker.args import WorkerArgs
    from taskiq.cli.worker.run import start_listen

    start_listen(
        WorkerArgs(
            broker=taskiq_broker(redis_url),
            modules=[],
            configure_logging=False,
            max_async_tasks=TASKIQ_MAX_ASYNC_TASKS,
            max_prefetch=TASKIQ_MAX_PREFETCH,
            # docs/guide/cli.md: when_received acknowledges before running, the earliest point.
            ack_type=AcknowledgeType.WHEN_RECEIVED,
        )
    )


def streaq_worker(redis_url: str) -> Any:
    from streaq import Worker

    # Results kept for the default 5 minutes, as each task's `ttl` says; no scheduler needed.
    worker = Worker(redis_url=redis_url, queue_name=QUEUE, concurrency=STREAQ_CONCURRENCY)
    worker.task(name=TASK)(noop_async)
    return worker


def run_streaq(redis_url: str) -> None:
    """streaq 7.2 as its CLI's `_run_worker` runs it (log config included), without --burst."""
    import logging.config

    from streaq.utils import default_log_config

    worker = streaq_worker(redis_url)
    logging.config.dictConfig(default_log_config(worker.tz, False))
    worker.run_sync()


def dramatiq_broker(redis_url: str) -> Any:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=redis_url)  # the default middleware (retries, time limit, ...)
    dramatiq.actor(noop_sync, actor_name=TASK, queue_name=QUEUE, broker=broker)
    return broker


def run_dramatiq(redis_url: str) -> None:
    """dramatiq 2.2 with the Redis broker: one Worker, as each `dramatiq` CLI process runs one."""
    import signal
    import threading

    from dramatiq import Worker

    worker = Worker(dramatiq_broker(redis_url), worker_threads=DRAMATIQ_THREADS)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    worker.start()
    stopping.wait()
    worker.stop()


def run_worker(kind: str, redis_url: str) -> None:
    global counter
    sync = kind in ("celery", "rq", "dramatiq")
    counter = Redis.from_url(redis_url) if sync else AsyncRedis.from_url(redis_url)
    runs = {"saq": run_saq, "celery": run_celery, "rq": run_rq, "taskiq": run_taskiq}
    runs |= {"streaq": run_streaq, "dramatiq": run_dramatiq}
    runs[kind](redis_url)


# ---------------------------------------------------------------- enqueueing (in the driver)


async def enqueue_saq(redis_url: str, count: int) -> None:
    from saq import Queue

    queue = Queue.from_url(redis_url, name=QUEUE)
    await queue.connect()
    for start in range(0, count, BATCH):
        # Job docstring: ttl -1 drops the job's record on completion instead of keeping it 600 s.
        await asyncio.gather(
            *(
                queue.enqueue(TASK, key=f"bench-{n}", ttl=-1)
                for n in range(start, min(start + BATCH, count))
            )
        )
    await queue.disconnect()


def enqueue_celery(redis_url: str, count: int) -> None:
    app = celery_app(redis_url)
    with app.producer_or_acquire() as producer:
        for n in range(count):
            app.send_task(TASK, task_id=f"bench-{n}", producer=producer)


def enqueue_rq(redis_url: str, count: int) -> None:
    from rq import Queue

    queue = Queue(QUEUE, connection=Redis.from_url(redis_url))
    for start in range(0, count, BATCH):
        queue.enqueue_many(
            [
                # results.md: result_ttl=0 deletes the result (and the job) right away.
                Queue.prepare_data(noop_sync, result_ttl=0, job_id=f"bench-{n}")
                for n in range(start, min(start + BATCH, count))
            ]
        )


async def enqueue_taskiq(redis_url: str, count: int) -> None:
    broker = taskiq_broker(redis_url)
    await broker.startup()
    task = broker.find_task(TASK)
    for start in range(0, count, BATCH):
        await asyncio.gather(*(task.kiq() for _ in range(start, min(start + BATCH, count))))
    await broker.shutdown()


async def enqueue_streaq(redis_url: str, count: int) -> None:
    worker = streaq_worker(redis_url)
    task = worker.registry[TASK]
    async with worker:
        for start in range(0, count, BATCH):
            # Worker.enqueue_many: one pipeline a batch, as its docstring recommends.
            await worker.enqueue_many(
                [task.enqueue() for _ in range(start, min(start + BATCH, count))]
            )


def enqueue_dramatiq(redis_url: str, count: int) -> None:
    broker = dramatiq_broker(redis_url)
    actor = broker.get_actor(TASK)
    for _ in range(count):
        actor.send()
    broker.close()


async def enqueue(kind: str, redis_url: str, count: int) -> None:
    if kind == "saq":
        await enqueue_saq(redis_url, count)
    elif kind == "celery":
        await asyncio.to_thread(enqueue_celery, redis_url, count)
    elif kind == "rq":
        await asyncio.to_thread(enqueue_rq, redis_url, count)
    elif kind == "streaq":
        await enqueue_streaq(redis_url, count)
    elif kind == "dramatiq":
        await asyncio.to_thread(enqueue_dramatiq, redis_url, count)
    else:
        await enqueue_taskiq(redis_url, count)


# ---------------------------------------------------------------- the driver


async def peer_rate(bench: common.Bench, kind: str, count: int, profile: bool = False) -> float:
    redis = AsyncRedis.from_url(bench.redis_url)
    try:
        await redis.flushdb()
        await enqueue(kind, bench.redis_url, count)
        return await common.drain_worker(bench, __file__, kind, count, redis, profile)
    finally:
        await redis.aclose()


async def rate(bench: common.Bench, side: str, count: int, profile: bool = False) -> float:
    if side == "ours":
        return await throughput(bench, "ours", count, profile=profile)
    return await peer_rate(bench, side, count, profile)


def main() -> None:
    cli = common.parser(__doc__)
    cli.add_argument("--count", type=int, default=20000, help="no-op tasks per side and run")
    cli.add_argument("--sides", nargs="+", choices=SIDES, default=SIDES)
    cli.add_argument(
        "--profile", action="store_true", help="then one more run of each side under py-spy"
    )
    args = cli.parse_args()
    if args.command == "worker":
        logging.basicConfig(level=logging.WARNING)
        run_worker(args.kind, args.redis_url)
        return
    sides = ["ours", *(side for side in args.sides if side != "ours")]
    load = common.load_average()
    runs: dict[str, list[float]] = {side: [] for side in sides}
    with common.Bench.running(args.redis_url) as bench:
        print(f"{bench.redis_version} at {bench.redis_url}")
        for run, side in common.interleaved(sides, args.runs):
            runs[side].append(asyncio.run(rate(bench, side, args.count)))
            print(f"run {run + 1} {side}: {runs[side][-1]:.0f} tasks/s", flush=True)
        if args.profile:
            for side in sides:
                asyncio.run(rate(bench, side, args.count, profile=True))
    medians = common.print_ratio_table(runs, reference="ours")
    common.print_load("at the start", load)
    common.write_results(
        "peers",
        {
            "count": args.count,
            "redis_version": bench.redis_version,
            "load_average": load,
            "runs": runs,
            "medians": medians,
        },
    )


if __name__ == "__main__":
    main()
