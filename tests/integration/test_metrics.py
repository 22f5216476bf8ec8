"""The API's own metrics on /metrics."""

from __future__ import annotations

import re

from arq.connections import ArqRedis

from tests.support.polling import eventually
from tests.support.services import api_client
from verimail_shared.settings import Settings

LAG_COUNT = re.compile(r"^verimail_api_event_loop_lag_seconds_count (\S+)$", re.MULTILINE)


async def test_event_loop_lag_is_sampled_while_the_app_runs_and_exported(
    settings: Settings, redis: ArqRedis
) -> None:
    async with api_client(settings) as client:

        async def lag_samples() -> float:
            match = LAG_COUNT.search((await client.get("/metrics")).text)
            return float(match.group(1)) if match else 0.0

        async def sampled_since(count: float) -> bool:
            return await lag_samples() > count

        before = await lag_samples()
        await eventually(lambda: sampled_since(before), timeout=5, message="no new lag sample")
        text = (await client.get("/metrics")).text
    assert "# TYPE verimail_api_event_loop_lag_seconds histogram" in text
    assert 'verimail_api_event_loop_lag_seconds_bucket{le="0.05"}' in text
