"""Assembling the worker: its arq settings, start-up and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterable
from typing import Any

import structlog
import uvloop
from arq.connections import ArqRedis
from redis.exceptions import RedisError

from verimail_shared.jobs import (
    WAKEUP_CHANNEL,
    TaskName,
    deserialize_job,
    queue_key,
    queue_of_key,
    serialize_job,
)
from verimail_shared.marks import Completions
from verimail_shared.queue import connect, queue_counts, redis_settings
from verimail_shared.settings import Settings
from verimail_worker import deadletters, metrics
from verimail_worker.heartbeat import Heartbeat
from verimail_worker.relay import run_relay
from verimail_worker.runner import task_function
from verimail_worker.tasks import Deps, send_verify_email
from verimail_worker.weighted import WeightedWorker

log = structlog.get_logger(__name__)
GAUGE_INTERVAL_SECONDS = 15.0  # a common Prometheus scrape interval; each refresh costs Redis
REDIS_RETRY_SECONDS = 1.0


def health_check_key() -> str:
    """One key per host (per pod), so `--check` tells about this worker, not any worker."""
    return f"verimail:worker:health:{socket.gethostname()}"


class VerimailWorker(WeightedWorker):
    """The weighted worker plus the queue gauges, refreshed with the heartbeat."""

    _gauges_at = 0.0
    _heartbeat: Heartbeat | None = None

    async def _poll_iteration(self) -> None:
        # arq lets a lost Redis connection end the worker; ride the outage out instead. Jobs
        # whose bookkeeping failed run again once their in-progress key expires.
        try:
            await super()._poll_iteration()
        except (RedisError, OSError) as exc:
            log.warning("redis_unavailable", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(REDIS_RETRY_SECONDS)

    async def heart_beat(self) -> None:
        await super().heart_beat()
        if self._heartbeat is None:
            self._heartbeat = Heartbeat(self.weights, self.max_jobs, self.health_check_interval)
        await self._heartbeat.maybe_beat(self.pool, self.job_counter)
        if time.monotonic() - self._gauges_at >= GAUGE_INTERVAL_SECONDS:
            self._gauges_at = time.monotonic()
            await record_queue_depth(self.pool, self.weights)
            await record_dead_tasks(self.ctx["deps"])

    async def close(self) -> None:
        if self._heartbeat is not None and self._pool is not None:
            await self._heartbeat.leave(self._pool)
        await super().close()


async def record_queue_depth(redis: ArqRedis, keys: Iterable[str]) -> None:
    """Ready (due, not running), and deferred jobs per queue, as the admin route counts them."""
    counts = await queue_counts(redis, [queue_of_key(key) for key in keys])
    for name, count in counts.items():
        metrics.QUEUE_DEPTH.labels(name, "ready").set(count.ready)
        metrics.QUEUE_DEPTH.labels(name, "deferred").set(count.deferred)


async def record_dead_tasks(deps: Deps) -> None:
    try:
        counts = await deadletters.count_waiting(deps.sessions)
    except Exception as exc:  # a gauge is not worth failing the poll loop for
        log.warning("dead_task_count_failed", error=f"{type(exc).__name__}: {exc}")
        return
    for task in TaskName:
        for queue in deps.settings.worker_queues:
            metrics.DEAD_TASKS.labels(task.value, queue).set(counts.get((task.value, queue), 0))


def worker_settings(settings: Settings) -> dict[str, Any]:
    """arq's WorkerSettings for this worker, as keyword arguments, built from `settings`.

    arq's own CLI (`arq module.WorkerSettings`) would build a plain arq Worker, which knows one
    queue; `verimail-worker` builds a VerimailWorker from these instead (decision 002).
    """

    async def startup(ctx: dict[str, Any]) -> None:
        deps = Deps.open(settings)
        ctx["deps"] = deps
        ctx["completions"] = Completions(deps.sessions)
        ctx["relay"] = asyncio.create_task(run_relay(settings, deps.sessions, ctx["redis"]))
        metrics.initialise([task.value for task in TaskName], list(settings.worker_queues))
        log.info("worker_started", queues=settings.worker_queues, max_jobs=settings.worker_max_jobs)

    async def shutdown(ctx: dict[str, Any]) -> None:
        relay: asyncio.Task[None] | None = ctx.get("relay")
        if relay is not None:
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await relay
        completions: Completions | None = ctx.get("completions")
        if completions is not None:
            await completions.close()
        deps: Deps | None = ctx.get("deps")
        if deps is not None:
            await deps.close()
        log.info("worker_stopped")

    timeout = settings.worker_job_timeout_seconds
    return {
        "functions": [task_function(TaskName.SEND_VERIFY_EMAIL, send_verify_email, timeout)],
        "queues": {queue_key(name): weight for name, weight in settings.worker_queues.items()},
        "redis_settings": redis_settings(settings),
        "job_serializer": serialize_job,
        "job_deserializer": deserialize_job,
        "on_startup": startup,
        "on_shutdown": shutdown,
        "max_jobs": settings.worker_max_jobs,
        "poll_delay": settings.worker_poll_delay_seconds,
        "wakeup_channel": WAKEUP_CHANNEL,
        "job_completion_wait": settings.worker_shutdown_grace_seconds,
        "health_check_interval": settings.worker_health_check_interval_seconds,
        "health_check_key": health_check_key(),
        "keep_result": 3600,
    }


def create_worker(settings: Settings, **overrides: Any) -> VerimailWorker:
    """The worker for `settings`; tests pass overrides such as `handle_signals=False`.

    arq's Worker runs on the event loop that is current when it is built: outside a running
    loop (the `verimail-worker` command, the benchmarks) that is made a uvloop loop here.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.set_event_loop(uvloop.new_event_loop())
    return VerimailWorker(**{**worker_settings(settings), **overrides})


async def check_health(settings: Settings) -> bool:
    """True while this host's worker keeps its heartbeat key fresh."""
    redis = connect(settings)
    try:
        return bool(await redis.exists(health_check_key()))
    finally:
        await redis.aclose()
