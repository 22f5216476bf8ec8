"""No secret leaves: a whole signup and verification, logged at DEBUG, then every log line,
every metric, every Redis key and value and every answer is searched for every secret."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from arq.connections import ArqRedis
from pydantic import SecretStr

from tests.conftest import make_settings
from tests.support.polling import eventually
from tests.support.services import api_client, database, fetch_one, running_worker
from tests.support.smtp import Inbox, SmtpServer
from tests.support.users import new_user
from verimail_shared import queue
from verimail_shared.embedded import free_port, verification_link
from verimail_shared.logs import configure_logging
from verimail_shared.settings import LogFormat, Settings

SMTP_USER = "mailer"
SMTP_PASSWORD = "smtp-Pa55word-7f3c1e"
ADMIN_TOKEN = "admin-Token-5b9d2a71c0"
PASSWORD = "Sphinx of black quartz 91"


class AuthSmtpServer(SmtpServer):
    """The test SMTP server, but it insists on AUTH with our credentials."""

    def __init__(self) -> None:
        self.port = free_port()
        self.inbox = Inbox()
        self.logins: list[bytes] = []
        self._controller = Controller(
            self.inbox,
            hostname="127.0.0.1",
            port=self.port,
            authenticator=self._authenticate,
            auth_required=True,
            auth_require_tls=False,
        )

    def _authenticate(
        self, server: object, session: object, envelope: object, mechanism: str, data: object
    ) -> AuthResult:
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (
            SMTP_USER.encode(),
            SMTP_PASSWORD.encode(),
        )
        if ok:
            self.logins.append(mechanism.encode())
        return AuthResult(success=ok)


@pytest.fixture
def auth_smtp() -> Iterator[AuthSmtpServer]:
    server = AuthSmtpServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def debug_logs(settings: Settings) -> Iterator[io.StringIO]:
    """Every process log line at DEBUG, as JSON, into a buffer; the old handlers come back after."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    configure_logging(
        settings.model_copy(update={"log_level": "DEBUG", "log_format": LogFormat.JSON})
    )
    buffer = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(buffer)
    yield buffer
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


async def redis_dump(settings: Settings) -> str:
    """Every key and every value in the Redis database, as text."""
    client = queue.connect(settings)
    parts: list[str] = []
    try:
        async for key in client.scan_iter(count=1000):
            kind = (await client.type(key)).decode()
            value: object
            if kind == "string":
                value = await client.get(key)
            elif kind == "zset":
                value = await client.zrange(key, 0, -1, withscores=True)
            elif kind == "hash":
                value = await client.hgetall(key)
            elif kind == "list":
                value = await client.lrange(key, 0, -1)
            elif kind == "set":
                value = await client.smembers(key)
            else:
                value = kind
            parts.append(f"{key!r} {value!r}")
    finally:
        await client.aclose()
    return "\n".join(parts)


# Loggers of this test's own tools, not of Verimail: the HTTP client that plays the browser
# (it logs the URLs it fetches) and the SMTP server that plays the mail provider (it logs the
# messages it receives). In production both are other people's processes.
HARNESS_LOGGERS = ("httpx", "httpcore", "mail.log")


def from_test_harness(line: str) -> bool:
    try:
        logger = json.loads(line).get("logger", "")
    except ValueError:
        return False
    return str(logger).startswith(HARNESS_LOGGERS)


def answers_text(answers: list[httpx.Response]) -> str:
    return "\n".join(f"{a.status_code} {dict(a.headers)!r} {a.text}" for a in answers)


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
async def test_no_secret_in_logs_metrics_redis_or_answers(
    database_url: str,
    redis_url: str,
    auth_smtp: AuthSmtpServer,
    redis: ArqRedis,
    debug_logs: io.StringIO,
) -> None:
    settings = make_settings(
        database_url,
        redis_url,
        auth_smtp,
        smtp_username=SMTP_USER,
        smtp_password=SecretStr(SMTP_PASSWORD),
        admin_token=SecretStr(ADMIN_TOKEN),
        log_level="DEBUG",
    )
    user = new_user(password=PASSWORD)
    answers: list[httpx.Response] = []
    async with api_client(settings) as client, running_worker(settings):
        answers.append(await client.post("/v1/create_user", json=user))
        assert answers[-1].status_code == 200, answers[-1].text
        await eventually(lambda: auth_smtp.to(user["email"]), timeout=30)
        link = verification_link(auth_smtp.to(user["email"])[0])
        assert link is not None
        code = parse_qs(urlsplit(link).query)["secret_code"][0]
        path = link.removeprefix(settings.public_base_url)
        wrong = path.replace(code, code[:-1] + ("A" if code[-1] != "A" else "B"))

        answers += [
            await client.post("/v1/create_user", json=user),  # 409
            await client.post("/v1/create_user", json={**new_user(), "password": "password1"}),
            await client.post("/v1/create_user", content=f'{{"password": "{PASSWORD}"'),
            await client.post(
                "/v1/create_user",
                content=f"password={PASSWORD}",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            ),
            await client.get(wrong),  # 404
            await client.get(wrong, headers={"Accept": "text/html"}),
            await client.get(path),  # 200
            await client.get(path),  # used: 400
            await client.get(path, headers={"Accept": "text/html"}),
            await client.get("/v1/admin/queues", headers={"Authorization": "Bearer nope"}),
            await client.get(
                "/v1/admin/queues", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            ),
            await client.get(
                "/v1/admin/dead_tasks", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
            ),
            await client.post("/v1/resend_verify_email", json={"email": user["email"]}),
            await client.post("/v1/resend_verify_email", json={"email": "nobody@example.com"}),
        ]
        metrics = (await client.get("/metrics")).text
    assert [a.status_code for a in answers] == [
        200,
        409,
        400,
        400,
        415,
        404,
        404,
        200,
        400,
        400,
        401,
        200,
        200,
        200,
        200,
    ]
    assert auth_smtp.logins, "the worker did not log in to SMTP"

    async with database(settings) as engine:
        stored = await fetch_one(
            engine, "SELECT hashed_password FROM users WHERE username = :u", u=user["username"]
        )
        code_hash = await fetch_one(
            engine,
            "SELECT secret_code_hash FROM verify_emails WHERE username = :u",
            u=user["username"],
        )
    hashed_password = stored["hashed_password"]
    secrets = {
        "password": PASSWORD,
        "password hash": hashed_password,
        "password hash digest": hashed_password.rsplit("$", 1)[1],
        "verification code": code,
        "verification code hash": hashlib.sha256(code.encode()).hexdigest(),
        "stored code hash": code_hash["secret_code_hash"],
        "SMTP password": SMTP_PASSWORD,
        "SMTP AUTH PLAIN": base64.b64encode(f"\0{SMTP_USER}\0{SMTP_PASSWORD}".encode()).decode(),
        "SMTP AUTH LOGIN": base64.b64encode(SMTP_PASSWORD.encode()).decode(),
        "admin token": ADMIN_TOKEN,
    }
    logs = "\n".join(
        line for line in debug_logs.getvalue().splitlines() if not from_test_harness(line)
    )
    places = {
        "logs": logs,
        "metrics": metrics,
        "redis": await redis_dump(settings),
        "answers": answers_text(answers),
        "settings": f"{settings!s} {settings!r}",
    }
    assert '"event": "verify_email_sent"' in logs and '"level": "debug"' in logs
    leaks = [
        f"{name} in {place}"
        for name, secret in secrets.items()
        for place, text in places.items()
        if secret in text
    ]
    assert not leaks, [line for line in logs.splitlines() if code in line][:3]
