"""`verimail-admin` as operators run it: a real process against real PostgreSQL and Redis, with
a real worker sending real email over SMTP."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq.connections import ArqRedis
from sqlalchemy import text

from tests.support.polling import eventually
from tests.support.processes import command
from tests.support.services import api_client, database, running_worker
from tests.support.smtp import SmtpServer
from tests.support.users import new_user
from verimail_shared import queue
from verimail_shared.jobs import TaskName
from verimail_shared.settings import Settings

# Each verimail-admin process imports SQLAlchemy anew: seconds each on a loaded machine.
pytestmark = pytest.mark.timeout(600)


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "LOG_FORMAT": "json",
        "DEPENDENCY_TIMEOUT_SECONDS": "2",
        **extra,
    }


def admin(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [command("verimail-admin"), *args],
        env=cli_env(settings, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def admin_json(settings: Settings, *args: str) -> Any:
    result = admin(settings, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
async def worker(settings: Settings, redis: ArqRedis) -> AsyncIterator[None]:
    async with running_worker(settings):
        yield


async def sign_up(settings: Settings, body: dict[str, Any] | None = None) -> dict[str, Any]:
    body = body or new_user()
    async with api_client(settings) as client:
        assert (await client.post("/v1/create_user", json=body)).status_code == 200
    return body


async def test_queues_counts_a_deferred_job_in_a_table_and_in_json(
    settings: Settings, redis: ArqRedis
) -> None:
    payload = {"username": "nobody", "max_tries": 1}
    await queue.enqueue(redis, TaskName.SEND_VERIFY_EMAIL, payload, job_id="later", defer_by=600)
    data = admin_json(settings, "queues")
    rows = {row["name"]: row for row in data["queues"]}
    assert rows["critical"] == {
        "name": "critical",
        "ready": 0,
        "deferred": 1,
        "in_progress": 0,
        "dead": 0,
    }
    table = admin(settings, "queues")
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split() == [
        "QUEUE",
        "READY",
        "DEFERRED",
        "IN_PROGRESS",
        "DEAD",
    ]
    assert ["critical", "0", "1", "0", "0"] in [line.split() for line in table.stdout.splitlines()]


async def test_workers_lists_the_live_worker_with_its_queues_and_weights(
    settings: Settings, redis: ArqRedis, worker: None
) -> None:
    data = await eventually(lambda: admin_json(settings, "workers")["workers"], timeout=20)
    (record,) = data
    assert record["queues"] == {"critical": 10, "default": 5}
    assert record["max_jobs"] == settings.worker_max_jobs and record["host"]
    assert record["started"] <= record["heartbeat"]
    table = admin(settings, "workers")
    assert record["host"] in table.stdout and "critical:10,default:5" in table.stdout


async def test_dead_tasks_list_retry_and_delete_a_letter_from_an_smtp_550(
    settings: Settings, redis: ArqRedis, smtp_server: SmtpServer, worker: None
) -> None:
    body = new_user()
    smtp_server.inbox.refuse[body["email"]] = "550 no such user here"
    await sign_up(settings, body)
    await sign_up(settings)  # another signup, whose email goes out
    listed = await eventually(
        lambda: [
            row
            for row in admin_json(settings, "dead-tasks", "list", "--task", "send_verify_email")[
                "dead_tasks"
            ]
            if row["payload"]["username"] == body["username"]
        ],
        timeout=30,
    )
    (letter,) = listed
    assert "550" in letter["last_error"] and letter["queue"] == "critical"
    table = admin(settings, "dead-tasks", "list", "--queue", "critical", "--limit", "5")
    assert str(letter["id"]) in table.stdout and "550" in table.stdout

    del smtp_server.inbox.refuse[body["email"]]
    retried = admin_json(settings, "dead-tasks", "retry", str(letter["id"]))
    assert retried["results"][0]["changed"] is True
    await eventually(lambda: smtp_server.to(body["email"]), timeout=30)
    again = admin_json(settings, "dead-tasks", "retry", str(letter["id"]))
    assert again["results"][0]["changed"] is False  # re-queuing twice queues once
    assert "re-queued already" in again["results"][0]["result"]

    deleted = admin(settings, "dead-tasks", "delete", str(letter["id"]))
    assert deleted.returncode == 0 and f"deleted dead letter {letter['id']}" in deleted.stdout
    gone = admin(settings, "dead-tasks", "delete", str(letter["id"]))
    assert gone.returncode == 1 and gone.stderr.count("\n") == 1 and "not found" in gone.stderr


async def test_dead_tasks_retry_all_requeues_every_waiting_letter(
    settings: Settings, redis: ArqRedis
) -> None:
    async with database(settings) as engine, engine.begin() as connection:
        for index in range(3):
            await connection.execute(
                text(
                    "INSERT INTO dead_tasks (job_id, task, queue, payload, tries, last_error) "
                    "VALUES (:job_id, 'send_verify_email', 'critical', :payload, 1, '550')"
                ),
                {"job_id": f"all-{index}", "payload": '{"username": "u", "max_tries": 1}'},
            )
    result = admin_json(settings, "dead-tasks", "retry", "--all")
    assert result["results"][0]["result"].startswith("3 dead letters re-queued")
    assert await redis.zcard("arq:queue:critical") == 3


async def test_lookup_tells_a_signups_story_with_its_sent_time_and_message_id(
    settings: Settings, redis: ArqRedis, smtp_server: SmtpServer, worker: None
) -> None:
    body = await sign_up(settings)
    await eventually(lambda: smtp_server.to(body["email"]), timeout=30)
    story = await eventually(
        lambda: (
            (data := admin_json(settings, "lookup", body["email"]))["emails"][0]["sent_at"] and data
        ),
        timeout=30,
    )
    (email,) = story["emails"]
    (message,) = smtp_server.to(body["email"])
    assert story["user"]["username"] == body["username"]
    assert story["user"]["is_email_verified"] is False
    assert email["message_id"] == message["Message-ID"]
    assert email["outbox"]["created_at"] and email["code_used"] is False
    assert "hashed_password" not in json.dumps(story)
    table = admin(settings, "lookup", body["username"])
    assert table.returncode == 0 and body["email"] in table.stdout
    assert message["Message-ID"] in table.stdout


async def test_lookup_of_an_unknown_signup_exits_1_with_one_line(
    settings: Settings, redis: ArqRedis
) -> None:
    result = admin(settings, "lookup", "nobody@example.com")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "verimail-admin: error: no user with username or email 'nobody@example.com'"
    ]


@pytest.mark.parametrize(
    "args",
    [
        ["dead-tasks", "retry"],
        ["dead-tasks", "retry", "1", "--all"],
        ["dead-tasks", "delete"],
        ["dead-tasks", "list", "--limit", "0"],
        ["dead-tasks", "list", "--task", "nope"],
        ["lookup"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2(settings: Settings, args: list[str]) -> None:
    result = admin(settings, *args)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [["queues"], ["workers"], ["dead-tasks", "list"], ["lookup", "x"]])
def test_an_unreachable_redis_is_one_line_without_a_traceback(
    settings: Settings, args: list[str]
) -> None:
    result = admin(settings, *args, REDIS_URL="redis://127.0.0.1:1/0")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "verimail-admin: error: Redis at redis://127.0.0.1:1/0 is unreachable (ConnectionError)"
    ]


def test_an_unreachable_postgres_is_one_line_without_a_traceback(settings: Settings) -> None:
    result = admin(settings, "queues", DATABASE_URL="postgresql://postgres@127.0.0.1:1/verimail")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and "PostgreSQL at postgresql://postgres@127.0.0.1:1/verimail" in lines[0]
    )
