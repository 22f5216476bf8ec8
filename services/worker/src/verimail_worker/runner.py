"""Runs a task under arq: context for the logs, metrics, deadlines, and the one error handler.

arq retries only when a job raises `Retry`. Every failure of every task passes through
`handle_failure`, which logs it (simplebank's "process task failed" line) and decides: retry
after a backoff while tries remain and the error is transient, or fail for good.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from arq.worker import Function, Retry, func
from prometheus_client import Counter, Gauge, Histogram

from verimail_shared.errors import PermanentError
from verimail_shared.jobs import TASK_PAYLOADS, TaskName, queue_of_key
from verimail_shared.marks import Completions
from verimail_worker import deadletters
from verimail_worker.lifecycle import FAILURE_LOGGED, current_queue_key
from verimail_worker.metrics import (
    DURATION,
    FAILED,
    IN_PROGRESS,
    LATENESS,
    PROCESSED,
    RETRIED,
)
from verimail_worker.reasons import describe
from verimail_worker.retry import backoff_seconds, is_permanent
from verimail_worker.tasks import Deps, Job

log = structlog.get_logger("verimail_worker.runner")

Handler = Callable[[Deps, Any, Job], Awaitable[None]]

# arq's own limit stays out of the way; the payload's max_tries is the one that counts.
ARQ_MAX_TRIES = 1_000
# arq cancels a job at its timeout and fails it without a retry; our deadline comes first
# and turns a stuck attempt into a transient error instead.
ARQ_TIMEOUT_MARGIN_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class _Series:
    """One task's metric series on one queue, looked up once instead of per attempt."""

    processed: Counter
    retried: Counter
    failed: Counter
    duration: Histogram
    lateness: Histogram
    in_progress: Gauge

    @classmethod
    def of(cls, task: str, queue: str) -> _Series:
        return cls(
            processed=PROCESSED.labels(task, queue),
            retried=RETRIED.labels(task, queue),
            failed=FAILED.labels(task, queue),
            duration=DURATION.labels(task, queue),
            lateness=LATENESS.labels(task, queue),
            in_progress=IN_PROGRESS.labels(task, queue),
        )


def task_function(task: TaskName, handler: Handler, timeout: float) -> Function:
    """The arq Function that runs `handler` for `task` with a payload checked against its model."""
    model = TASK_PAYLOADS[task]
    series: dict[str, _Series] = {}

    async def run(ctx: dict[str, Any], payload: dict[str, Any]) -> None:
        deps: Deps = ctx["deps"]
        completions: Completions = ctx["completions"]
        queue = queue_of_key(current_queue_key())
        job = Job(id=ctx["job_id"], try_=ctx["job_try"])
        metrics = series.get(queue) or series.setdefault(queue, _Series.of(task.value, queue))
        lateness = max(time.time() - ctx["score"] / 1000, 0)
        request_id = payload.get("request_id") if isinstance(payload, dict) else None
        with structlog.contextvars.bound_contextvars(
            task=task.value, job_id=job.id, job_try=job.try_, queue=queue, request_id=request_id
        ):
            metrics.in_progress.inc()
            metrics.lateness.observe(lateness)
            log.debug("task_started", lateness_ms=round(lateness * 1000, 2))
            started = time.perf_counter()
            try:
                parsed = model.model_validate(payload)
                if job.try_ > parsed.max_tries:
                    # Only after a crashed or killed attempt: arq counted it, we never saw it fail.
                    raise PermanentError(f"max tries ({parsed.max_tries}) exhausted")
                async with asyncio.timeout(timeout):
                    await handler(deps, parsed, job)
                completions.add(job.id)
            except Exception as exc:
                duration = time.perf_counter() - started
                metrics.in_progress.dec()
                metrics.duration.observe(duration)
                outcome = await handle_failure(
                    deps,
                    completions,
                    task,
                    queue,
                    job,
                    payload,
                    exc,
                    metrics,
                    duration=duration,
                    lateness=lateness,
                )
                if outcome is exc:
                    ctx[FAILURE_LOGGED] = True
                    raise
                raise outcome from exc
            duration = time.perf_counter() - started
            metrics.in_progress.dec()
            metrics.duration.observe(duration)
            metrics.processed.inc()
            log.info(
                "task_processed",
                duration_ms=round(duration * 1000, 2),
                lateness_ms=round(lateness * 1000, 2),
            )

    return func(
        run,
        name=task.value,
        max_tries=ARQ_MAX_TRIES,
        timeout=timeout + ARQ_TIMEOUT_MARGIN_SECONDS,
    )


async def handle_failure(
    deps: Deps,
    completions: Completions,
    task: TaskName,
    queue: str,
    job: Job,
    payload: Any,
    exc: Exception,
    metrics: _Series,
    *,
    duration: float,
    lateness: float,
) -> Exception:
    """Log a failed attempt, once, and return what arq should see: `Retry`, or the error itself.

    A task that fails for good is stored as a dead letter first; if even that fails
    (PostgreSQL down), it is retried instead, so that no task is ever dropped.
    """
    settings = deps.settings
    max_tries = _max_tries(payload)
    permanent = is_permanent(exc) or max_tries is None or job.try_ >= max_tries
    error = describe(exc, settings)
    dead_letter_error = None
    if permanent:
        try:
            await deadletters.bury(
                deps.sessions,
                job_id=job.id,
                task=task.value,
                queue=queue,
                payload=payload,
                tries=job.try_,
                error=error,
            )
        except Exception as store_exc:
            dead_letter_error = f"{type(store_exc).__name__}: {store_exc}"
    buried = permanent and dead_letter_error is None
    retry_in = backoff_seconds(
        job.try_, settings.retry_backoff_base_seconds, settings.retry_backoff_max_seconds
    )
    log.error(
        "process task failed",
        task=task.value,
        job_id=job.id,
        job_try=job.try_,
        max_tries=max_tries,
        queue=queue,
        payload=payload,
        error=error,
        permanent=permanent,
        outcome="dead_letter" if buried else "retry",
        retry_in_seconds=None if buried else round(retry_in, 3),
        dead_letter_error=dead_letter_error,
        duration_ms=round(duration * 1000, 2),
        lateness_ms=round(lateness * 1000, 2),
    )
    if buried:
        metrics.failed.inc()
        completions.add(job.id)
        return exc
    metrics.retried.inc()
    return Retry(defer=retry_in)


def _max_tries(payload: Any) -> int | None:
    value = payload.get("max_tries") if isinstance(payload, dict) else None
    return value if isinstance(value, int) and value >= 1 else None
