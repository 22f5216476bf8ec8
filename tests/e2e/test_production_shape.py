"""Verimail as it is deployed: nginx with TLS in front of two `verimail-api`, PgBouncer in
transaction pooling (fewer server connections than the clients' pools) in front of PostgreSQL
with TLS and a private CA, Redis over TLS as an ACL user, and workers that submit to Postfix over
STARTTLS with SASL AUTH, which delivers into a Maildir. Every server is a real one from Debian's
packages (`make tools`); the snippets they run are the ones in deploy/production/."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import httpx
import pytest

from tests.support.nginx import Nginx
from tests.support.pgbouncer import PgBouncer
from tests.support.polling import eventually
from tests.support.postfix import Postfix
from tests.support.processes import Service, command
from tests.support.production_postgres import TlsPostgres
from tests.support.production_redis import TlsRedis
from tests.support.tls import Certificates, make_certificates
from tests.support.users import new_user
from verimail_shared.embedded import LINK, free_port, wait_for_port

SIGNUPS = 40
ADMIN_TOKEN = "production-shape-admin-token-0123456789"
PROXY_CLIENT = "127.0.0.2"  # the client's address as nginx sees it; nginx itself is 127.0.0.1


@dataclass
class Shape:
    certs: Certificates
    postgres: TlsPostgres
    pgbouncer: PgBouncer
    redis: TlsRedis
    postfix: Postfix
    nginx: Nginx
    apis: list[Service]
    workers: list[Service]
    env: dict[str, str]

    def services(self) -> list[Service]:
        return [*self.apis, *self.workers]


def shape_env(
    postgres: TlsPostgres,
    pgbouncer: PgBouncer,
    redis: TlsRedis,
    postfix: Postfix,
    certs: Certificates,
    public_url: str,
) -> dict[str, str]:
    """What an operator sets: every connection verified against the private CA."""
    return {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": pgbouncer.url_for("verimail", postgres.password, "verimail"),
        "DATABASE_POOL_SIZE": "10",
        "REDIS_URL": redis.url,
        "REDIS_CA_FILE": str(certs.ca_file),
        "SMTP_HOST": "localhost",
        "SMTP_PORT": str(postfix.port),
        "SMTP_TLS": "starttls",
        "SMTP_USERNAME": postfix.username,
        "SMTP_PASSWORD": postfix.password,
        "SMTP_CA_FILE": str(certs.ca_file),
        "EMAIL_SENDER": "Verimail <no-reply@verimail.test>",
        "PUBLIC_BASE_URL": public_url,
        "TRUSTED_PROXIES": "127.0.0.1/32",
        "ADMIN_TOKEN": ADMIN_TOKEN,
        "VERIFY_CODE_KEY": "production-shape-code-key-0123456789",
        "VERIFY_EMAIL_DEFER_SECONDS": "0",
        "RATE_LIMIT_CREATE_USER": "1000/minute",
        "RATE_LIMIT_RESEND_IP": "3/minute",
        "WORKER_POLL_DELAY_SECONDS": "0.2",
        "LOG_FORMAT": "json",
    }


@pytest.fixture(scope="module")
def shape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shape]:
    folder = tmp_path_factory.mktemp("production")
    certs = make_certificates(folder / "certs")
    postgres = TlsPostgres(folder, certs)
    postgres.start()
    pgbouncer = PgBouncer(
        folder,
        "localhost",
        postgres.port,
        pool_mode="transaction",
        default_pool_size=4,
        users={"verimail": postgres.password},
        server_tls_ca_file=certs.ca_file,
        client_tls=(certs.server_cert_file, certs.server_key_file),
    )
    redis = TlsRedis(folder, certs)
    postfix = Postfix(folder, cert_file=certs.server_cert_file, key_file=certs.server_key_file)
    api_ports = [free_port(), free_port()]
    nginx = Nginx(
        folder,
        upstreams=api_ports,
        cert_file=certs.server_cert_file,
        key_file=certs.server_key_file,
    )
    started: list[Any] = []
    services: list[Service] = []
    try:
        for server in (pgbouncer, redis, postfix):
            server.start()
            started.append(server)
        env = shape_env(postgres, pgbouncer, redis, postfix, certs, nginx.url)
        # Migrations go to PostgreSQL directly, as deploy/production says.
        migrate = subprocess.run(
            [command("verimail-migrate")],
            env={**env, "DATABASE_URL": postgres.url},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert migrate.returncode == 0, migrate.stderr
        apis = [
            Service("verimail-api", {**env, "API_PORT": str(port)}, folder / f"api{i}.log")
            for i, port in enumerate(api_ports)
        ]
        services += apis
        metrics_ports = [free_port(), free_port()]
        workers = [
            Service(
                "verimail-worker",
                {**env, "WORKER_METRICS_PORT": str(port)},
                folder / f"worker{i}.log",
            )
            for i, port in enumerate(metrics_ports)
        ]
        services += workers
        for port in [*api_ports, *metrics_ports]:
            wait_for_port(port, 60)
        nginx.start()
        started.append(nginx)
        yield Shape(certs, postgres, pgbouncer, redis, postfix, nginx, apis, workers, env)
    finally:
        for service in services:
            service.stop()
        for server in reversed(started):
            server.stop()
        postgres.stop()


def client(shape: Shape, address: str = PROXY_CLIENT) -> httpx.AsyncClient:
    """A client of nginx from `address`, trusting the private CA only."""
    trust = ssl.create_default_context(cafile=shape.certs.ca_file)
    transport = httpx.AsyncHTTPTransport(verify=trust, local_address=address)
    return httpx.AsyncClient(base_url=shape.nginx.url, transport=transport, timeout=30)


def delivered(shape: Shape) -> Counter[str]:
    return Counter(str(message["To"]).split("<")[-1].rstrip(">") for message in mail(shape))


def mail(shape: Shape) -> list[EmailMessage]:
    return shape.postfix.messages()


def link_in(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    found = LINK.search(body.get_content())
    assert found is not None, "no link in the email"
    return found.group(0)


def error_lines(service: Service) -> list[dict[str, Any]]:
    return [line for line in service.lines() if line.get("level") in {"error", "critical"}]


async def test_signups_through_nginx_pgbouncer_tls_and_postfix_each_verify_once(
    shape: Shape,
) -> None:
    users = [new_user() for _ in range(SIGNUPS)]
    async with client(shape) as http:
        answers = await asyncio.gather(*(http.post("/v1/create_user", json=u) for u in users))
        assert [answer.status_code for answer in answers] == [200] * SIGNUPS, [
            a.text for a in answers if a.status_code != 200
        ]
        emails = {user["email"] for user in users}
        await eventually(
            lambda: emails <= set(delivered(shape)),
            timeout=120,
            interval=0.5,
            message="not every verification email reached the Maildir",
        )
        by_address = {str(m["To"]).split("<")[-1].rstrip(">"): m for m in mail(shape)}
        for user in users:
            link = link_in(by_address[user["email"]])
            assert link.startswith(shape.nginx.url + "/v1/verify_email?")
            verified = await http.get(link, headers={"Accept": "application/json"})
            assert verified.json() == {"is_verified": True}, verified.text
        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text

    counts = delivered(shape)
    assert {email: counts[email] for email in emails} == dict.fromkeys(emails, 1)
    for service in shape.services():
        assert service.running, service.log.read_text()[-2000:]
        assert error_lines(service) == []
    assert not any(line.get("status", 200) >= 500 for api in shape.apis for line in api.lines())


async def test_resend_is_limited_per_real_client_behind_the_proxy(shape: Shape) -> None:
    """TRUSTED_PROXIES names nginx: each client has its own limit, whichever replica answers."""
    async with client(shape, "127.0.0.3") as first, client(shape, "127.0.0.4") as second:
        statuses = [
            (await first.post("/v1/resend_verify_email", json={"email": email})).status_code
            for email in (f"nobody{i}@example.com" for i in range(4))
        ]
        other = await second.post("/v1/resend_verify_email", json={"email": "other@example.com"})
        other_status = other.status_code
    assert statuses[:3] == [statuses[0]] * 3 and statuses[0] < 400
    assert statuses[3] == 429
    assert other_status == statuses[0]


async def test_console_behind_the_proxy_sets_secure_cookies_and_stays_on_https(
    shape: Shape,
) -> None:
    async with client(shape) as http:
        form = await http.get("/admin/login")
        assert form.status_code == 200
        assert all("Secure" in cookie for cookie in form.headers.get_list("set-cookie"))
        csrf = form.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        signed_in = await http.post("/admin/login", data={"token": ADMIN_TOKEN, "csrf": csrf})
        assert signed_in.status_code == 303
        assert not signed_in.headers["location"].startswith("http:")
        assert all("Secure" in cookie for cookie in signed_in.headers.get_list("set-cookie"))
        overview = await http.get("/admin/")
        assert overview.status_code == 200
        api = await http.get("/v1/admin/queues", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        assert api.status_code == 200, api.text


def test_verimail_admin_works_through_pgbouncer_as_the_acl_user(shape: Shape) -> None:
    for args in (["queues"], ["workers"], ["lookup", "nobody@example.com"]):
        result = subprocess.run(
            [command("verimail-admin"), *args],
            env=shape.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "Traceback" not in result.stderr
        assert result.returncode in (0, 1), result.stderr
        if args[0] == "lookup":
            assert result.returncode == 1
            assert "unreachable" not in result.stderr, result.stderr
        else:
            assert result.returncode == 0, result.stderr


def test_a_database_certificate_that_does_not_verify_is_one_line(shape: Shape) -> None:
    wrong_ca = shape.postgres.url.replace(
        str(shape.certs.ca_file).replace("/", "%2F"), str(shape.certs.other_ca_file)
    )
    wrong_ca = wrong_ca.split("sslrootcert=")[0] + f"sslrootcert={shape.certs.other_ca_file}"
    result = subprocess.run(
        [command("verimail-migrate")],
        env={**shape.env, "DATABASE_URL": wrong_ca},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "PostgreSQL at localhost" in lines[0] and "certificate" in lines[0]
