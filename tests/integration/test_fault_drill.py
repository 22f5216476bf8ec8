"""simplebank's fault drill: PostgreSQL is down when the task runs, then comes back."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import structlog
from arq.connections import ArqRedis
from prometheus_client import REGISTRY

from tests.conftest import make_settings
from tests.support.polling import eventually
from tests.support.services import api_client, running_worker
from tests.support.smtp import SmtpServer
from tests.support.users import new_user
from verimail_shared.embedded import EmbeddedPostgres
from verimail_shared.migrate import upgrade
from verimail_shared.settings import Settings


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this test's own, since the drill stops it."""
    server = EmbeddedPostgres(tmp_path / "postgres")
    server.start()
    yield server
    server.stop(mode="immediate")


def retried() -> float:
    labels = {"task": "send_verify_email", "queue": "critical"}
    return REGISTRY.get_sample_value("verimail_worker_tasks_retried_total", labels) or 0.0


async def test_postgres_down_when_the_task_runs_is_logged_retried_then_delivered(
    own_postgres: EmbeddedPostgres, redis_url: str, smtp_server: SmtpServer, redis: ArqRedis
) -> None:
    url = own_postgres.create_database("drill")
    settings: Settings = make_settings(url, redis_url, smtp_server, verify_email_defer_seconds=0.5)
    await asyncio.to_thread(upgrade, settings)
    body = new_user()
    async with api_client(settings) as client:
        assert (await client.post("/v1/create_user", json=body)).status_code == 200
    own_postgres.stop()
    retried_before = retried()

    with structlog.testing.capture_logs() as logs:
        async with running_worker(settings):
            await eventually(
                lambda: retried() >= retried_before + 2,
                timeout=30,
                message="the task was not retried while PostgreSQL was down",
            )
            failures = [e for e in logs if e["event"] == "process task failed"]
            assert smtp_server.to(body["email"]) == []
            await asyncio.to_thread(own_postgres.start)
            await eventually(
                lambda: smtp_server.to(body["email"]),
                timeout=30,
                message="no email after PostgreSQL came back",
            )

    failure = failures[0]
    assert failure["task"] == "send_verify_email"
    assert failure["payload"]["username"] == body["username"]
    assert failure["queue"] == "critical"
    assert failure["permanent"] is False
    assert failure["job_try"] == 1 and failure["max_tries"] == settings.verify_email_max_tries
    assert failure["error"]
    assert len(smtp_server.to(body["email"])) == 1

    link = urlsplit(smtp_server.link_to(body["email"]))
    async with api_client(settings) as client:
        response = await client.get(f"{link.path}?{link.query}")
    assert response.json() == {"is_verified": True}


async def test_after_a_postgres_restart_signup_fails_at_most_once_then_works(
    own_postgres: EmbeddedPostgres, redis_url: str, smtp_server: SmtpServer, redis: ArqRedis
) -> None:
    url = own_postgres.create_database("drill")
    settings: Settings = make_settings(url, redis_url, smtp_server)
    await asyncio.to_thread(upgrade, settings)
    async with api_client(settings) as client:
        assert (await client.post("/v1/create_user", json=new_user())).status_code == 200
        await asyncio.to_thread(own_postgres.stop)
        await asyncio.to_thread(own_postgres.start)
        answers = [await client.post("/v1/create_user", json=new_user()) for _ in range(3)]
    # The pool's connection died with the server: its first use is a 503 a client may retry,
    # and SQLAlchemy then replaces the whole pool.
    assert answers[0].status_code in (200, 503), answers[0].text
    assert [answer.status_code for answer in answers[1:]] == [200, 200]
