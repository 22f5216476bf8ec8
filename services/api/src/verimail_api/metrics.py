"""The API's Prometheus metrics, and the sampler that measures how long the event loop stalls."""

from __future__ import annotations

import asyncio
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
    """Wakes every `interval` seconds and records each oversleep in EVENT_LOOP_LAG.

    A stall of S seconds shows as a lag between S - `interval` and S, so stalls longer than the
    interval are never missed. A plain timer callback, not a task sleeping in a loop: no
    coroutine, future or task step per sample, which at 100 a second was a visible share of
    a signup's event-loop CPU (decision 053).
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._schedule(asyncio.get_running_loop())

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        # perf_counter, not loop.time(): uvloop's clock is cached per loop iteration, in ms.
        self._timer = loop.call_later(self.interval, self._sample, loop, time.perf_counter())

    def _sample(self, loop: asyncio.AbstractEventLoop, started: float) -> None:
        EVENT_LOOP_LAG.observe(max(time.perf_counter() - started - self.interval, 0.0))
        self._schedule(loop)
