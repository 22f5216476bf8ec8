"""A whole system of the drill's own: PostgreSQL, Redis and SMTP it may stop, the API in this
process, and workers as real subprocesses it may kill."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import make_settings
from tests.support.polling import eventually
from tests.support.processes import Service, secret
from tests.support.services import api_client
from tests.support.smtp import SmtpServer
from tests.support.users import new_user
from verimail_shared import queue
from verimail_shared.embedded import (
    EmbeddedPostgres,
    EmbeddedRedis,
    free_port,
    verification_link,
)
from verimail_shared.jobs import Queue, queue_key
from verimail_shared.migrate import upgrade
from verimail_shared.settings import Settings

ADMIN_TOKEN = "drill-admin-token-0123456789abcdef"


class Stack:
    def __init__(self, root: Path, smtp: SmtpServer, **overrides: Any) -> None:
        self.root = root
        self.smtp = smtp
        self.postgres = EmbeddedPostgres(root / "postgres")
        self.redis_server = EmbeddedRedis(root / "redis", appendonly=True)
        self.overrides = overrides
        self.workers: list[Service] = []
        self.metrics_urls: dict[Service, str] = {}
        self.users: list[dict[str, str]] = []
        self.settings: Settings
        self.client: httpx.AsyncClient
        self.redis: ArqRedis

    def start_servers(self) -> None:
        self.postgres.start()
        self.redis_server.start()
        url = self.postgres.create_database("drill")
        self.settings = make_settings(
            url,
            self.redis_server.url,
            self.smtp,
            admin_token=ADMIN_TOKEN,
            outbox_relay_after_seconds=1,
            outbox_relay_interval_seconds=0.2,
            **self.overrides,
        )
        upgrade(self.settings)

    def env(self) -> dict[str, str]:
        s = self.settings
        return {
            **os.environ,
            "DATABASE_URL": s.database_url,
            "REDIS_URL": s.redis_url,
            "SMTP_HOST": s.smtp_host,
            "SMTP_PORT": str(s.smtp_port),
            "VERIFY_CODE_KEY": secret(s.verify_code_key),
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "DEBUG",  # the drills read `task_started`, logged at DEBUG
            "WORKER_METRICS_PORT": str(free_port()),
            "WORKER_POLL_DELAY_SECONDS": "0.05",
            "WORKER_JOB_TIMEOUT_SECONDS": str(s.worker_job_timeout_seconds),
            "WORKER_SHUTDOWN_GRACE_SECONDS": str(s.worker_shutdown_grace_seconds),
            "WORKER_MAX_JOBS": str(s.worker_max_jobs),
            "RETRY_BACKOFF_BASE_SECONDS": "0.1",
            "RETRY_BACKOFF_MAX_SECONDS": "1",
            "OUTBOX_RELAY_AFTER_SECONDS": "1",
            "OUTBOX_RELAY_INTERVAL_SECONDS": "0.2",
            "OUTBOX_RECONCILE_AFTER_SECONDS": "2",
            "SIGNUP_ENQUEUE": s.signup_enqueue.value,
            "DEPENDENCY_TIMEOUT_SECONDS": "2",
        }

    def start_worker(self) -> Service:
        log = self.root / f"worker-{len(self.workers) + 1}.log"
        env = self.env()
        worker = Service("verimail-worker", env, log)
        self.workers.append(worker)
        self.metrics_urls[worker] = f"http://127.0.0.1:{env['WORKER_METRICS_PORT']}/metrics"
        return worker

    async def metric(self, worker: Service, name: str, **labels: str) -> float:
        """One sample from the worker's /metrics; a series it does not export fails."""
        async with httpx.AsyncClient(timeout=5) as client:
            response = await client.get(self.metrics_urls[worker])
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        raise AssertionError(f"{name}{labels} is not in the worker's /metrics")

    async def sign_up(self, count: int, **fields: str) -> list[dict[str, str]]:
        bodies = [new_user(**fields) for _ in range(count)]
        for body in bodies:
            response = await self.client.post("/v1/create_user", json=body)
            assert response.status_code == 200, response.text
        self.users += bodies
        return bodies

    def delivered(self) -> Counter[str]:
        """Emails per recipient. Identical copies of one message (its Message-ID and its link),
        sent again when an earlier send's outcome was lost, are one email to the reader
        (decisions 090 and 091) and count once; any other second email counts twice."""
        emails = {
            (str(message["To"]), str(message["Message-ID"]), verification_link(message))
            for message in self.smtp.messages
        }
        return Counter(to for to, _, _ in emails)

    async def drained(self) -> bool:
        """Nothing queued, nothing running, nothing left in the outbox."""
        pending = await self.redis.zcard(queue_key(Queue.CRITICAL))
        pending += await self.redis.zcard(queue_key(Queue.DEFAULT))
        if pending:
            return False
        rows = self.postgres.psql(
            "SELECT count(*) FROM outbox WHERE dispatched_at IS NULL", "drill"
        )
        return rows.strip() == "0"

    async def assert_one_email_per_signup(self, timeout: float = 60) -> None:
        """The drills' invariant: users created = emails delivered, one each, none phantom."""
        expected = {user["email"] for user in self.users}
        await eventually(
            lambda: set(self.delivered()) >= expected,
            timeout=timeout,
            message=f"not every signup got its email ({len(expected)} expected)",
        )
        await eventually(self.drained, timeout=timeout, message="the queues did not drain")
        delivered = self.delivered()
        missing = expected - set(delivered)
        duplicates = {email: n for email, n in delivered.items() if n > 1}
        phantom = set(delivered) - expected
        assert (missing, duplicates, phantom) == (set(), {}, set())
        created = self.postgres.psql("SELECT count(*) FROM users", "drill")
        assert int(created) == len(self.users)

    def failures(self) -> list[dict[str, Any]]:
        return [line for w in self.workers for line in w.events("process task failed")]

    def stop(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.kill()
        self.redis_server.stop()
        self.postgres.stop(mode="immediate")


@pytest.fixture
async def stack(
    tmp_path: Path, smtp_server: SmtpServer, request: pytest.FixtureRequest
) -> AsyncIterator[Stack]:
    overrides = getattr(request, "param", {})
    system = Stack(tmp_path, smtp_server, **overrides)
    await asyncio.to_thread(system.start_servers)
    system.redis = queue.connect(system.settings)
    try:
        async with api_client(system.settings) as client:
            system.client = client
            yield system
    finally:
        await system.redis.aclose()
        await asyncio.to_thread(system.stop)
