"""Redis Sentinel drill: the master dies under signups; after failover nothing is lost or doubled.

A master, a replica and three sentinels (the embedded Valkey server) on loopback; the real
`verimail-api` and `verimail-worker` find the master through REDIS_SENTINELS. Signups flow
before, during and after the master is SIGKILLed. Every signup answered 200 must get exactly one
email: the outbox covers enqueues that failed or that the dead master took with it, the per-job
sent marker covers tasks cut off mid-way.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.polling import eventually
from tests.support.processes import Service
from tests.support.sentinel import MASTER_NAME, SentinelCluster, redis_command
from tests.support.smtp import SmtpServer
from tests.support.users import new_user
from verimail_shared.embedded import free_port, wait_for_port

SIGNUP_INTERVAL_SECONDS = 0.1
SIGNUPS_BEFORE_THE_KILL = 10
SIGNUPS_AFTER_THE_FAILOVER = 10


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    cluster = SentinelCluster(tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


class Supervisor:
    """Restarts the worker when it exits, as compose's `restart:` and Kubernetes do."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.worker = Service("verimail-worker", {**os.environ, **env}, log)
        self.restarts = 0

    def check(self) -> None:
        if not self.worker.running:
            self.worker = Service("verimail-worker", {**os.environ, **self.env}, self.log)
            self.restarts += 1


class Signups:
    """Signups one after another; each is retried on 503 as a client should."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.accepted: list[dict[str, str]] = []
        self.refused = 0

    async def one(self) -> None:
        body = new_user()
        deadline = time.monotonic() + 30
        while True:
            response = await self.client.post("/v1/create_user", json=body)
            if response.status_code == 200:
                self.accepted.append(body)
                return
            assert response.status_code == 503, response.text
            self.refused += 1
            assert time.monotonic() < deadline, "signups did not resume after the failover"
            await asyncio.sleep(SIGNUP_INTERVAL_SECONDS)


async def test_signups_and_emails_continue_after_the_master_dies(
    cluster: SentinelCluster, database_url: str, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    await eventually(cluster.sentinels_ready, timeout=20, message="sentinels did not converge")
    api_port = free_port()
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": "redis://127.0.0.1/0",  # the database number; the host comes from sentinels
        "REDIS_SENTINELS": cluster.sentinels_setting,
        "REDIS_SENTINEL_MASTER": MASTER_NAME,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_server.port),
        "API_PORT": str(api_port),
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{api_port}",
        "WORKER_METRICS_PORT": str(free_port()),
        "WORKER_POLL_DELAY_SECONDS": "0.05",
        "WORKER_HEALTH_CHECK_INTERVAL_SECONDS": "1",
        # A task cut off by the kill comes back once its in-progress key expires; 5 s, so that a
        # task slowed by a loaded machine is not timed out between the SMTP server's 250 and
        # its COMMIT, which sends its email again (decision 006).
        "WORKER_JOB_TIMEOUT_SECONDS": "5",
        # Every signup comes from this one address, more than 20 a minute.
        "RATE_LIMIT_CREATE_USER": "off",
        "VERIFY_EMAIL_DEFER_SECONDS": "0",
        "DEPENDENCY_TIMEOUT_SECONDS": "1",
        "RETRY_BACKOFF_BASE_SECONDS": "0.2",
        "RETRY_BACKOFF_MAX_SECONDS": "1",
        "OUTBOX_RELAY_AFTER_SECONDS": "1",
        "OUTBOX_RELAY_INTERVAL_SECONDS": "0.2",
        "OUTBOX_RECONCILE_AFTER_SECONDS": "2",
    }
    api = Service("verimail-api", {**os.environ, **env}, tmp_path / "api.log")
    supervisor = Supervisor(env, tmp_path / "worker.log")
    try:
        wait_for_port(api_port, 30)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=5) as client:
            signups = Signups(client)
            for _ in range(SIGNUPS_BEFORE_THE_KILL):
                await signups.one()
                await asyncio.sleep(SIGNUP_INTERVAL_SECONDS)

            cluster.kill_master()
            killed_at = time.monotonic()
            failover_seconds = None
            while failover_seconds is None:
                await signups.one()
                await asyncio.sleep(SIGNUP_INTERVAL_SECONDS)
                if cluster.failed_over():
                    failover_seconds = time.monotonic() - killed_at
                assert time.monotonic() - killed_at < 30, "the sentinels promoted no replica"
            during = len(signups.accepted) - SIGNUPS_BEFORE_THE_KILL
            for _ in range(SIGNUPS_AFTER_THE_FAILOVER):
                await signups.one()

            def every_email_arrived() -> bool:
                supervisor.check()
                return all(smtp_server.to(body["email"]) for body in signups.accepted)

            await eventually(every_email_arrived, timeout=60, interval=0.1, message="emails lost")

            def quiet() -> bool:
                # Nothing left in Redis that could still send another email.
                new_master = cluster.replica_port
                return (
                    redis_command(new_master, "ZCARD", "arq:queue:critical") == ":0"
                    and redis_command(new_master, "KEYS", "arq:in-progress:*") == "*0"
                )

            await eventually(quiet, timeout=30, interval=0.1, message="tasks still pending")
            sent = Counter(m["To"] for m in smtp_server.messages)
            missing = [b["email"] for b in signups.accepted if sent[b["email"]] == 0]
            duplicates = [address for address, count in sent.items() if count > 1]
            assert (missing, duplicates) == ([], [])
            assert len(sent) == len(signups.accepted)

            verified = await client.get(smtp_server.link_to(signups.accepted[-1]["email"]))
            assert verified.json() == {"is_verified": True}
        print(
            f"sentinel drill: failover {failover_seconds:.1f}s after the kill; "
            f"{len(signups.accepted)} signups accepted ({during} during the failover), "
            f"{signups.refused} answers 503; emails {sum(sent.values())}, missing 0, "
            f"duplicates 0; worker restarts {supervisor.restarts}"
        )
    finally:
        api.stop()
        supervisor.worker.stop()
