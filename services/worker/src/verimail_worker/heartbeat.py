"""The worker's record for operators (host, queues, jobs running, heartbeat) and its share of
the hourly processed/failed counters, written at most once per health-check interval."""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass, field

import structlog
from arq.connections import ArqRedis
from prometheus_client import Counter
from redis.exceptions import RedisError

from verimail_shared import workers
from verimail_shared.jobs import queue_of_key
from verimail_worker import metrics

log = structlog.get_logger(__name__)


def _total(counter: Counter) -> int:
    return int(
        sum(s.value for m in counter.collect() for s in m.samples if s.name.endswith("_total"))
    )


# The counters are per process, so what was reported is too: two workers in one process
# (as in tests) report each finished task once.
_reported = {"processed": 0, "failed": 0}


@dataclass
class Heartbeat:
    queues: dict[str, int]
    max_jobs: int
    interval_seconds: float
    id: str = field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    )
    started_at: float = field(default_factory=time.time)
    _last: float = 0.0

    async def maybe_beat(self, redis: ArqRedis, running: int) -> None:
        now = time.time()
        if now - self._last < self.interval_seconds:
            return
        self._last = now
        record = workers.WorkerRecord(
            id=self.id,
            host=socket.gethostname(),
            pid=os.getpid(),
            queues={queue_of_key(k): w for k, w in self.queues.items()},
            max_jobs=self.max_jobs,
            running=running,
            started_at=self.started_at,
            heartbeat_at=now,
        )
        try:
            await workers.beat(redis, record, ttl_seconds=int(self.interval_seconds * 3) + 1)
            await _report_finished(redis)
        except (RedisError, OSError) as exc:  # the next beat tries again with the sums so far
            log.warning("heartbeat_failed", error=f"{type(exc).__name__}: {exc}")

    async def leave(self, redis: ArqRedis) -> None:
        """Report what finished since the last beat, and take the record away."""
        try:
            await _report_finished(redis)
            await workers.forget(redis, self.id)
        except (RedisError, OSError) as exc:  # the record expires by itself
            log.warning("heartbeat_failed", error=f"{type(exc).__name__}: {exc}")


async def _report_finished(redis: ArqRedis) -> None:
    """Add what the counters gained since the last report to the hourly counts."""
    processed, failed = _total(metrics.PROCESSED), _total(metrics.FAILED)
    await workers.count_finished(
        redis, processed - _reported["processed"], failed - _reported["failed"]
    )
    _reported.update(processed=processed, failed=failed)
