"""The outbox relay, run beside every worker: enqueues tasks whose writer did not, and
re-enqueues unfinished tasks that Redis lost (a crash or failover after the enqueue).

It lives in the worker service because that is what already runs continuously, talks to both
PostgreSQL and Redis, and scales out; SKIP LOCKED lets any number of copies share the work.
See docs/decisions/005.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import structlog
from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from verimail_shared import outbox
from verimail_shared.settings import Settings
from verimail_worker.metrics import OUTBOX_LOST, OUTBOX_RELAYED

log = structlog.get_logger(__name__)
PURGE_EVERY_SECONDS = 3600.0


async def run_relay(
    settings: Settings, sessions: async_sessionmaker[AsyncSession], redis: ArqRedis
) -> None:
    """Relay forever: a batch, then a pause unless the batch was full."""
    loop = asyncio.get_running_loop()
    purged_at = loop.time()
    while True:
        relayed = 0
        try:
            async with asyncio.timeout(settings.dependency_timeout_seconds * 4):
                relayed = await outbox.relay(
                    sessions, redis, older_than_seconds=settings.outbox_relay_after_seconds
                )
                lost = await outbox.reconcile(
                    sessions, redis, older_than_seconds=settings.outbox_reconcile_after_seconds
                )
            OUTBOX_RELAYED.inc(relayed)
            OUTBOX_LOST.inc(lost)
            if loop.time() - purged_at > PURGE_EVERY_SECONDS:
                purged_at = loop.time()
                retention = timedelta(hours=settings.outbox_retention_hours)
                log.info("outbox_purged", rows=await outbox.purge(sessions, retention))
        except Exception as exc:  # PostgreSQL or Redis down: try again next round
            log.warning("outbox_relay_failed", error=f"{type(exc).__name__}: {exc}")
        if relayed < outbox.RELAY_BATCH:
            await asyncio.sleep(settings.outbox_relay_interval_seconds)
