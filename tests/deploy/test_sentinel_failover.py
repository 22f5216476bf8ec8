"""Redis Sentinel drill: the master dies under signups; after failover nothing is lost or doubled.

A master, a replica and three sentinels (Debian's binaries) on loopback; the real
`verimail-api` and `verimail-worker` find the master through REDIS_SENTINELS. Signups are
deferred a few seconds so that at the kill every acknowledged task waits in Redis (replicated)
and no attempt is in flight: an attempt cut off mid-way is at-least-once and may send its email
again, which is not what this drill counts. What it counts: every signup answered 200, before
or after the kill, gets exactly one email.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.polling import eventually
from tests.support.processes import service
from tests.support.sentinel import MASTER_NAME, SentinelCluster, redis_command
from tests.support.smtp import SmtpServer
from tests.support.users import new_user
from verimail_shared.embedded import free_port, wait_for_port

SIGNUPS_BEFORE = 5
SIGNUPS_AFTER = 5
DEFER_SECONDS = 3


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
        self.worker = service("verimail-worker", env, log)
        self.restarts = 0

    def check(self) -> None:
        if not self.worker.running:
            self.worker = service("verimail-worker", self.env, self.log)
            self.restarts += 1


async def sign_up(client: httpx.AsyncClient, deadline: float) -> dict[str, str]:
    """One signup, retried on 503 as a client should while Redis fails over."""
    body = new_user()
    while True:
        try:
            response = await client.post("/v1/create_user", json=body)
            if response.status_code == 200:
                return body
            assert response.status_code == 503, response.text
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("signups did not resume after the failover")


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
        "VERIFY_EMAIL_DEFER_SECONDS": str(DEFER_SECONDS),
        "DEPENDENCY_TIMEOUT_SECONDS": "1",
        "RETRY_BACKOFF_BASE_SECONDS": "0.2",
        "ARGON2_TIME_COST": "2",
    }
    api = service("verimail-api", env, tmp_path / "api.log")
    supervisor = Supervisor(env, tmp_path / "worker.log")
    try:
        wait_for_port(api_port, 30)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=5) as client:
            deadline = time.monotonic() + 30
            signed_up = [await sign_up(client, deadline) for _ in range(SIGNUPS_BEFORE)]

            cluster.kill_master()
            killed_at = time.monotonic()
            first = await sign_up(client, killed_at + 30)
            resumed_after = time.monotonic() - killed_at
            signed_up.append(first)
            signed_up += [await sign_up(client, killed_at + 30) for _ in range(SIGNUPS_AFTER - 1)]
            assert cluster.failed_over(), "signups resumed but the sentinels name no new master"

            def every_email_arrived() -> bool:
                supervisor.check()
                return all(smtp_server.to(body["email"]) for body in signed_up)

            await eventually(every_email_arrived, timeout=45, interval=0.1, message="emails lost")
            # Nothing left in Redis that could still send a second email.
            new_master = cluster.replica_port
            assert redis_command(new_master, "ZCARD", "arq:queue:critical") == ":0"
            assert redis_command(new_master, "KEYS", "arq:in-progress:*") == "*0"

            sent = Counter(m["To"] for m in smtp_server.messages)
            missing = [b["email"] for b in signed_up if sent[b["email"]] == 0]
            duplicates = [address for address, count in sent.items() if count > 1]
            assert (missing, duplicates) == ([], [])

            verified = await client.get(smtp_server.link_to(first["email"]))
            assert verified.json() == {"is_verified": True}
        print(
            f"sentinel drill: {len(signed_up)} signups, signups resumed "
            f"{resumed_after:.1f}s after the kill, worker restarts {supervisor.restarts}"
        )
    finally:
        api.stop()
        supervisor.worker.stop()
