"""The API's Prometheus metrics, and the sampler that measures how long the event loop stalls."""

from __future__ import annotations

import asyncio
import contextlib
import time

from prometheus_client import Counter, Histogram

REQUESTS = Counter(
    "verimail_api_requests_total",
    "HTTP requests answered, by route template and status code.",
    ["method", "route", "status"],
)
REQUEST_DURATION = Histogram(
    "verimail_api_request_duration_seconds",
    "Time to answer an HTTP request, by route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
TASKS_ENQUEUED = Counter(
    "verimail_api_tasks_enqueued_total",
    "Tasks put on a queue by the API.",
    ["task", "queue"],
)
EVENT_LOOP_LAG = Histogram(
    "verimail_api_event_loop_lag_seconds",
    "How much later than due a short sleep on the event loop woke: time the loop was blocked.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


class EventLoopLagSampler:
    """Sleeps `interval` seconds over and over and records each oversleep in EVENT_LOOP_LAG.

    A stall of S seconds shows as a lag between S - `interval` and S, so stalls longer than the
    interval are never missed. Waking an idle loop costs a system call and a timer: 100 times a
    second came to ~15 ms of CPU per second on the 2-core development VM.
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._sample(), name="event-loop-lag")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _sample(self) -> None:
        while True:
            # perf_counter, not loop.time(): uvloop's clock is cached per loop iteration, in ms.
            started = time.perf_counter()
            await asyncio.sleep(self.interval)
            EVENT_LOOP_LAG.observe(max(time.perf_counter() - started - self.interval, 0.0))
