"""The API's event-loop lag sampler."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import REGISTRY

from tests.support.polling import eventually
from verimail_api.metrics import EventLoopLagSampler


def lags_over_50ms() -> float:
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(f"verimail_api_event_loop_lag_seconds{name}", labels) or 0

    return sample("_count") - sample("_bucket", le="0.05")


async def test_a_blocked_event_loop_shows_as_lag_over_50ms() -> None:
    sampler = EventLoopLagSampler(interval=0.01)
    before = lags_over_50ms()
    sampler.start()
    try:
        await asyncio.sleep(0)  # the sampler takes its first reading and starts its sleep
        time.sleep(0.1)  # noqa: ASYNC251  (the stall under test: the loop can run nothing else)
        await eventually(lambda: lags_over_50ms() > before, timeout=5, message="stall not seen")
    finally:
        await sampler.stop()
