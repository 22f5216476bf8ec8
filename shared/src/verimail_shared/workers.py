"""What workers tell operators through Redis: who is alive, and how much each hour processed.

arq's health-check key says only that *a* worker lives; the console and `verimail-admin`
want each worker's host, queues and weights, jobs running, start and last heartbeat. Every
worker writes one small JSON record per heartbeat (expiring, so a dead worker drops out) and
adds what it finished since its last beat to the current hour's counters (decision 080).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from arq.connections import ArqRedis

WORKER_KEY_PREFIX = "verimail:worker:record:"
WORKERS_INDEX = "verimail:workers"  # sorted set: worker id -> last heartbeat (unix seconds)
HOURLY_KEY_PREFIX = "verimail:stats:hour:"  # hash per UTC hour: processed, failed
HOURLY_RETENTION_SECONDS = 26 * 3600
MAX_WORKERS_SHOWN = 500


@dataclass(frozen=True)
class WorkerRecord:
    id: str
    host: str
    pid: int
    queues: dict[str, int]
    max_jobs: int
    running: int
    started_at: float
    heartbeat_at: float

    @property
    def started(self) -> datetime:
        return datetime.fromtimestamp(self.started_at, UTC)

    @property
    def heartbeat(self) -> datetime:
        return datetime.fromtimestamp(self.heartbeat_at, UTC)


async def beat(redis: ArqRedis, record: WorkerRecord, ttl_seconds: int) -> None:
    """Write `record`, alive for `ttl_seconds` unless the next beat renews it."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.set(WORKER_KEY_PREFIX + record.id, json.dumps(asdict(record)), ex=ttl_seconds)
        pipe.zadd(WORKERS_INDEX, {record.id: record.heartbeat_at})
        # Workers gone for a day leave the index; a live one is back at its next beat.
        pipe.zremrangebyscore(WORKERS_INDEX, "-inf", record.heartbeat_at - 86400)
        await pipe.execute()


async def forget(redis: ArqRedis, worker_id: str) -> None:
    """A worker shutting down cleanly leaves at once instead of expiring."""
    async with redis.pipeline(transaction=False) as pipe:
        pipe.delete(WORKER_KEY_PREFIX + worker_id)
        pipe.zrem(WORKERS_INDEX, worker_id)
        await pipe.execute()


async def live_workers(redis: ArqRedis) -> list[WorkerRecord]:
    """Workers whose record has not expired, most recently started first."""
    ids = await redis.zrevrange(WORKERS_INDEX, 0, MAX_WORKERS_SHOWN - 1)
    if not ids:
        return []
    raws = await redis.mget([WORKER_KEY_PREFIX + i.decode() for i in ids])
    records = [WorkerRecord(**json.loads(raw)) for raw in raws if raw is not None]
    return sorted(records, key=lambda r: r.started_at, reverse=True)


def hour_key(at: float) -> str:
    return f"{HOURLY_KEY_PREFIX}{int(at // 3600)}"


async def count_finished(redis: ArqRedis, processed: int, failed: int) -> None:
    """Add tasks that finished since the last call to this hour's counters."""
    if not processed and not failed:
        return
    key = hour_key(time.time())
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hincrby(key, "processed", processed)
        pipe.hincrby(key, "failed", failed)
        pipe.expire(key, HOURLY_RETENTION_SECONDS)
        await pipe.execute()


@dataclass(frozen=True)
class HourCount:
    hour: datetime
    processed: int
    failed: int


async def hourly(redis: ArqRedis, hours: int = 24) -> list[HourCount]:
    """Processed and failed tasks in each of the last `hours` UTC hours, oldest first; the
    current hour is the last. One round trip."""
    now = int(time.time() // 3600)
    slots = list(range(now - hours + 1, now + 1))
    async with redis.pipeline(transaction=False) as pipe:
        for slot in slots:
            pipe.hmget(f"{HOURLY_KEY_PREFIX}{slot}", ["processed", "failed"])
        rows = await pipe.execute()
    return [
        HourCount(datetime.fromtimestamp(slot * 3600, UTC), int(p or 0), int(f or 0))
        for slot, (p, f) in zip(slots, rows, strict=True)
    ]
