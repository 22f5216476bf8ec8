"""Verimail as real processes against Redis with TLS and the ACL user operators create from
deploy/production/redis-acl.conf: nothing Verimail does may be denied."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.polling import eventually
from tests.support.processes import Service, command, running_system
from tests.support.production_redis import TlsRedis
from tests.support.smtp import SmtpServer
from tests.support.tls import make_certificates
from tests.support.users import new_user
from verimail_shared.settings import Settings

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    server = TlsRedis(tmp_path, make_certificates(tmp_path / "certs"))
    server.start()
    yield server
    server.stop()


def denials(server: TlsRedis) -> list[tuple[str, str, str]]:
    """What ACL LOG recorded: why, where (top level, a script, MULTI) and what was refused."""
    with server.admin() as admin:
        entries: list[dict[str, Any]] = admin.acl_log()
    return [(entry["reason"], entry["context"], entry["object"]) for entry in entries]


def admin(env: dict[str, str], *args: str) -> Any:
    done = subprocess.run(
        [command("verimail-admin"), *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def worker_check(env: dict[str, str]) -> int:
    """`verimail-worker --check`: 0 while this host's worker keeps its health key fresh."""
    command_line = [command("verimail-worker"), "--check"]
    return subprocess.run(command_line, env=env, timeout=60, check=False).returncode


def retries(worker: Service) -> list[dict[str, Any]]:
    return [e for e in worker.events("process task failed") if e["outcome"] == "retry"]


async def test_the_acl_user_denies_nothing_the_api_worker_and_admin_cli_do(
    tls_redis: TlsRedis, settings: Settings, smtp_server: SmtpServer, tmp_path: Path
) -> None:
    production = settings.model_copy(update={"redis_url": tls_redis.url})
    # REDIS_CA_FILE where Verimail reads it; SSL_CERT_FILE where it does not yet.
    trust = {"SSL_CERT_FILE": str(tls_redis.ca_file), "REDIS_CA_FILE": str(tls_redis.ca_file)}
    fast = {"RETRY_BACKOFF_BASE_SECONDS": "0.05", "RETRY_BACKOFF_MAX_SECONDS": "0.5"}
    kept, retried, dead = new_user(), new_user(), new_user()
    smtp_server.inbox.refuse[dead["email"]] = "550 no such user here"
    with running_system(production, tmp_path, **trust, **fast) as system:
        async with httpx.AsyncClient(base_url=system.base_url, timeout=30) as client:
            for body in (kept, dead):
                created = await client.post("/v1/create_user", json=body)
                assert created.status_code == 200, created.text
            await eventually(lambda: smtp_server.to(kept["email"]), timeout=60)
            smtp_server.inbox.refuse[retried["email"]] = "451 try again later"
            assert (await client.post("/v1/create_user", json=retried)).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
        await eventually(lambda: retries(system.worker), timeout=60)
        del smtp_server.inbox.refuse[retried["email"]]
        await eventually(lambda: smtp_server.to(retried["email"]), timeout=60)
        env = {**system.env, "LOG_FORMAT": "json"}
        letters = await eventually(lambda: admin(env, "dead-tasks", "list")["dead_tasks"])
        del smtp_server.inbox.refuse[dead["email"]]
        admin(env, "dead-tasks", "retry", str(letters[0]["id"]))
        await eventually(lambda: smtp_server.to(dead["email"]), timeout=60)
        assert admin(env, "queues")["queues"] and admin(env, "workers")["workers"]
        admin(env, "lookup", kept["username"])
        assert worker_check(env) == 0
    assert denials(tls_redis) == []
