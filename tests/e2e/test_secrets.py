"""Secrets never leave: a full signup and verification at DEBUG, then every log line, every
/metrics output, every Redis key and value and every error body is searched for them."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from arq.connections import ArqRedis
from sqlalchemy import text

from tests.support.polling import eventually
from tests.support.processes import Service, command, system_env
from tests.support.services import database, fetch_value
from tests.support.smtp import SmtpServer
from tests.support.users import new_user
from verimail_shared.embedded import free_port, wait_for_port
from verimail_shared.settings import Settings

SMTP_PASSWORD = "smtp-Pa55word-never-logged"
ADMIN_TOKEN = "admin-T0ken-never-logged-0123456789"


@pytest.fixture
async def auth_smtp() -> AsyncIterator[SmtpServer]:
    server = SmtpServer(require_auth=True)
    server.start()
    yield server
    server.stop()


def text_of(raw: bytes) -> str:
    return raw.decode(errors="replace")


async def redis_dump(redis: ArqRedis) -> str:
    """Every key and every value in the database, as text; a key of another type fails."""
    parts = []
    async for key in redis.scan_iter(count=1000):
        kind = text_of(await redis.type(key))
        parts.append(text_of(key))
        if kind == "none":  # expired or deleted since the scan saw it
            continue
        # redis-py gives lrange, smembers and hgetall one signature for its sync and async clients,
        # `Awaitable[T] | T`, which mypy will not await: hence the three ignores below.
        if kind == "string":
            values = [await redis.get(key) or b""]
        elif kind == "list":
            values = await redis.lrange(key, 0, -1)  # type: ignore[misc]
        elif kind == "set":
            values = list(await redis.smembers(key))  # type: ignore[misc]
        elif kind == "zset":
            values = list(await redis.zrange(key, 0, -1))
        elif kind == "hash":
            values = [part for pair in (await redis.hgetall(key)).items() for part in pair]  # type: ignore[misc]
        elif kind == "stream":
            values = [
                part
                for entry_id, fields in await redis.xrange(key)
                for part in (entry_id, *(item for pair in fields.items() for item in pair))
            ]
        else:
            pytest.fail(f"redis_dump cannot read {text_of(key)!r}, a {kind}")
        parts += [text_of(value) for value in values]
    return "\n".join(parts)


async def console_pages(
    client: httpx.AsyncClient, settings: Settings, user: dict[str, str], code: str
) -> str:
    """Every console page, signed in, with a dead letter whose payload carries a secret field
    (the console masks it), and the pages bad input gets."""
    texts = [(await client.get("/admin/login")).text]
    csrf = re.search(r'name="csrf" value="([^"]+)"', texts[0])
    assert csrf
    wrong = await client.post("/admin/login", data={"token": ADMIN_TOKEN + "x", "csrf": csrf[1]})
    assert wrong.status_code == 401
    signed_in = await client.post("/admin/login", data={"token": ADMIN_TOKEN, "csrf": csrf[1]})
    assert signed_in.status_code == 303
    overview = await client.get("/admin/")
    session_csrf = re.search(r'name="csrf" value="([^"]+)"', overview.text)
    assert session_csrf
    dead = {"username": user["username"], "max_tries": 1, "secret_code": code}
    resent = await client.post(
        "/admin/lookup/resend", data={"csrf": session_csrf[1], "q": user["email"]}
    )
    assert resent.status_code == 303
    texts.append((await client.get(resent.headers["location"])).text)
    paths = [
        "/admin/",
        "/admin/queues",
        *(f"/admin/queues/{q}?state={s}" for q in ("critical", "default") for s in STATES),
        "/admin/dead-letters?status=all",
        "/admin/dead-letters/999999",
        f"/admin/lookup?q={user['email']}",
        f"/admin/lookup?q={user['username']}",
        "/admin/lookup?q=nobody",
        "/admin/queues/critical?page=abc",
    ]
    texts += [(await client.get(path)).text for path in paths]
    texts.append(await dead_letter_page(client, settings, dead))
    texts.append((await client.post("/admin/logout", data={})).text)  # no CSRF: 403
    return "\n".join(texts)


STATES = ("ready", "deferred", "in_progress")


async def dead_letter_page(
    client: httpx.AsyncClient, settings: Settings, payload: dict[str, object]
) -> str:
    async with database(settings) as engine, engine.begin() as connection:
        dead_id = (
            await connection.execute(
                text(
                    "INSERT INTO dead_tasks (job_id, task, queue, payload, tries, last_error) "
                    "VALUES ('secret-dead', 'send_verify_email', 'critical', :payload, 1, 'x') "
                    "RETURNING id"
                ),
                {"payload": json.dumps(payload)},
            )
        ).scalar_one()
    page = await client.get(f"/admin/dead-letters/{dead_id}")
    assert page.status_code == 200 and "secret_code" in page.text
    listing = await client.get("/admin/dead-letters")
    return page.text + listing.text


def run_every_cli_command(env: dict[str, str], user: dict[str, str]) -> str:
    """stdout and stderr of every verimail-admin command, as tables and as JSON."""
    commands = [
        ["queues"],
        ["workers"],
        ["dead-tasks", "list", "--status", "all"],
        ["lookup", user["email"]],
        ["lookup", user["username"]],
        ["lookup", "nobody"],
    ]
    outputs = []
    for args in [*commands, *([*c, "--json"] for c in commands)]:
        done = subprocess.run(
            [command("verimail-admin"), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode in (0, 1), done.stderr
        outputs += [done.stdout, done.stderr]
    dead = subprocess.run(
        [command("verimail-admin"), "dead-tasks", "list", "--status", "all", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert '"secret_code": "********"' in dead.stdout
    return "\n".join(outputs)


@pytest.mark.timeout(600)  # a dozen verimail-admin processes besides the system
async def test_no_secret_reaches_a_log_a_metric_redis_or_an_error_body(
    settings: Settings, redis: ArqRedis, auth_smtp: SmtpServer, tmp_path: Path
) -> None:
    api_port, metrics_port = free_port(), free_port()
    env = system_env(
        settings,
        api_port,
        metrics_port,
        SMTP_PORT=str(auth_smtp.port),
        SMTP_USERNAME="mailer",
        SMTP_PASSWORD=SMTP_PASSWORD,
        ADMIN_TOKEN=ADMIN_TOKEN,
        LOG_LEVEL="DEBUG",
    )
    api = Service("verimail-api", env, tmp_path / "api.log")
    worker = Service("verimail-worker", env, tmp_path / "worker.log")
    body = new_user()
    bodies: list[str] = []
    try:
        wait_for_port(api_port, 30)
        wait_for_port(metrics_port, 30)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=10) as client:
            assert (await client.post("/v1/create_user", json=body)).status_code == 200
            await eventually(lambda: auth_smtp.to(body["email"]), timeout=30)
            link = auth_smtp.link_to(body["email"])
            code = link.rsplit("secret_code=", 1)[1]
            assert (await client.get(link)).json() == {"is_verified": True}
            # Error bodies, each sent with a secret in the request.
            failing = [
                await client.post("/v1/create_user", json=body),  # 409
                await client.post("/v1/create_user", json={**body, "username": "X"}),  # 400
                await client.get(link),  # used
                await client.get(link.replace("email_id=", "email_id=9")),  # not found
                await client.get("/v1/admin/queues", headers={"Authorization": "Bearer nope"}),
                await client.get(
                    "/v1/admin/queues", headers={"Authorization": f"Bearer {ADMIN_TOKEN}x"}
                ),
            ]
            assert all(400 <= r.status_code < 500 for r in failing)
            bodies += [r.text for r in failing]
            pages = await console_pages(client, settings, body, code)
            metrics = [
                (await client.get("/metrics")).text,
                (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).text,
            ]
        cli = run_every_cli_command(env, body)
        dump = await redis_dump(redis)
    finally:
        api.stop()
        worker.stop()
    async with database(settings) as engine:
        password_hash = await fetch_value(
            engine, "SELECT hashed_password FROM users WHERE username = :u", u=body["username"]
        )
        stored_code = await fetch_value(
            engine,
            "SELECT secret_code_hash FROM verify_emails WHERE username = :u",
            u=body["username"],
        )

    logs = api.log.read_text() + worker.log.read_text()
    assert re.search(r'"level": ?"debug"', logs)  # DEBUG really was on
    assert stored_code == hashlib.sha256(code.encode()).hexdigest()  # only the code's hash
    secrets = {
        "password": body["password"],
        "password hash": password_hash,
        "verification code": code,
        "SMTP password": SMTP_PASSWORD,
        "admin token": ADMIN_TOKEN,
        "verification code hash": stored_code,
    }
    places = {
        "logs": logs,
        "metrics": "\n".join(metrics),
        "redis": dump,
        "error bodies": "\n".join(bodies),
        "console pages": pages,
        "verimail-admin output": cli,
    }
    leaks = [
        (secret, place)
        for secret, value in secrets.items()
        for place, text in places.items()
        if value in text
    ]
    assert leaks == []
