"""The production shape's nginx and Postfix, real Debian servers started by tests/support.

nginx runs deploy/production/nginx.conf in front of two echoing upstreams; Postfix runs
deploy/production/postfix-main.cf and delivers every recipient into one Maildir.
"""

from __future__ import annotations

import base64
import ssl
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import httpx
import pytest
import trustme
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.support.nginx import Nginx, NginxConfigError
from tests.support.polling import eventually
from tests.support.postfix import Postfix, PostfixNeedsRoot
from verimail_shared.embedded import free_port, wait_for_port


@dataclass(frozen=True)
class Certificates:
    ca_file: Path
    server_cert_file: Path
    server_key_file: Path


def echo_app(name: str) -> Starlette:
    """An upstream that answers with its name and the headers the proxy set."""

    async def echo(request: Request) -> JSONResponse:
        body = await request.body()
        return JSONResponse(
            {
                "upstream": name,
                "host": request.headers.get("host"),
                "x_forwarded_for": request.headers.get("x-forwarded-for"),
                "x_forwarded_proto": request.headers.get("x-forwarded-proto"),
                "x_request_id": request.headers.get("x-request-id"),
                "body_bytes": len(body),
            }
        )

    return Starlette(routes=[Route("/{path:path}", echo, methods=["GET", "POST"])])


class EchoUpstream:
    """uvicorn in a thread of this process; it installs no signal handlers off the main thread."""

    def __init__(self, name: str) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            echo_app(name),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            proxy_headers=False,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        wait_for_port(self.port, 15)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    folder = tmp_path_factory.mktemp("certificates")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    certificates = Certificates(folder / "ca.crt", folder / "server.crt", folder / "server.key")
    ca.cert_pem.write_to_path(str(certificates.ca_file))
    certificates.server_cert_file.write_bytes(
        b"".join(blob.bytes() for blob in server.cert_chain_pems)
    )
    server.private_key_pem.write_to_path(str(certificates.server_key_file))
    return certificates


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory, certificates: Certificates) -> Iterator[Nginx]:
    upstreams = [EchoUpstream("first"), EchoUpstream("second")]
    for upstream in upstreams:
        upstream.start()
    proxy = Nginx(
        tmp_path_factory.mktemp("nginx"),
        upstreams=[upstream.port for upstream in upstreams],
        cert_file=certificates.server_cert_file,
        key_file=certificates.server_key_file,
    )
    try:
        proxy.start()
        yield proxy
    finally:
        proxy.stop()
        for upstream in upstreams:
            upstream.stop()


def start_postfix(folder: Path, certificates: Certificates) -> Postfix:
    server = Postfix(
        folder, cert_file=certificates.server_cert_file, key_file=certificates.server_key_file
    )
    try:
        server.start()
    except PostfixNeedsRoot as exc:
        pytest.skip(str(exc))
    return server


@pytest.fixture(scope="module")
def postfix(
    tmp_path_factory: pytest.TempPathFactory, certificates: Certificates
) -> Iterator[Postfix]:
    server = start_postfix(tmp_path_factory.mktemp("postfix"), certificates)
    yield server
    server.stop()


def tls_context(certificates: Certificates) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(certificates.ca_file))


def letter(to: str, subject: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "noreply@verimail.test"
    message["To"] = to
    message["Subject"] = subject
    message.set_content("Verify your address.")
    return message


def submission(
    postfix: Postfix, certificates: Certificates, password: str | None = None
) -> aiosmtplib.SMTP:
    """A client as the worker is one: STARTTLS against the private CA, then AUTH."""
    return aiosmtplib.SMTP(
        hostname="localhost",
        port=postfix.port,
        start_tls=True,
        tls_context=tls_context(certificates),
        username=postfix.username,
        password=postfix.password if password is None else password,
        timeout=15,
    )


def plain(postfix: Postfix) -> aiosmtplib.SMTP:
    """A client that never starts TLS."""
    return aiosmtplib.SMTP(hostname="localhost", port=postfix.port, start_tls=False, timeout=15)


async def test_nginx_proxies_over_tls_to_both_upstreams_with_the_forwarding_headers(
    nginx: Nginx, certificates: Certificates
) -> None:
    async with httpx.AsyncClient(
        base_url=nginx.url, verify=tls_context(certificates), timeout=15
    ) as client:
        answers = [(await client.get("/probe")).json() for _ in range(6)]

    assert {answer["upstream"] for answer in answers} == {"first", "second"}
    for answer in answers:
        assert answer["host"] == "localhost"
        assert answer["x_forwarded_for"] == "127.0.0.1"
        assert answer["x_forwarded_proto"] == "https"
        assert len(answer["x_request_id"]) == 32  # nginx's own $request_id


async def test_nginx_passes_on_the_clients_request_id_and_appends_to_x_forwarded_for(
    nginx: Nginx, certificates: Certificates
) -> None:
    headers = {"X-Request-ID": "client-chosen-id", "X-Forwarded-For": "203.0.113.9"}
    async with httpx.AsyncClient(
        base_url=nginx.url, verify=tls_context(certificates), timeout=15
    ) as client:
        answer = (await client.get("/probe", headers=headers)).json()

    assert answer["x_request_id"] == "client-chosen-id"
    assert answer["x_forwarded_for"] == "203.0.113.9, 127.0.0.1"


async def test_nginx_refuses_a_body_over_the_apis_16_kib_limit_and_passes_one_under_it(
    nginx: Nginx, certificates: Certificates
) -> None:
    async with httpx.AsyncClient(
        base_url=nginx.url, verify=tls_context(certificates), timeout=15
    ) as client:
        small = await client.post("/v1/signup", content=b"x" * 16_000)
        large = await client.post("/v1/signup", content=b"x" * (16 * 1024 + 1))

    assert small.status_code == 200
    assert small.json()["body_bytes"] == 16_000
    assert large.status_code == 413


def test_nginx_refuses_to_start_with_nginx_ts_message_when_the_config_is_bad(
    tmp_path: Path, certificates: Certificates
) -> None:
    proxy = Nginx(
        tmp_path,
        upstreams=[free_port()],
        cert_file=tmp_path / "missing.crt",
        key_file=certificates.server_key_file,
    )

    with pytest.raises(NginxConfigError, match="cannot load certificate"):
        proxy.start()
    proxy.stop()


async def test_postfix_refuses_mail_from_before_starttls_and_auth(postfix: Postfix) -> None:
    async with plain(postfix) as smtp:
        with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
            await smtp.sendmail("noreply@verimail.test", ["alice@example.com"], "Subject: x\n\nx")

    assert refused.value.code == 530
    assert "STARTTLS" in refused.value.message


async def test_postfix_neither_offers_nor_takes_auth_before_starttls(postfix: Postfix) -> None:
    credentials = base64.b64encode(f"\0{postfix.username}\0{postfix.password}".encode())
    async with plain(postfix) as smtp:
        await smtp.ehlo()
        offered = smtp.supports_extension("auth")
        response = await smtp.execute_command(b"AUTH", b"PLAIN", credentials)

    assert not offered
    assert response.code == 530


async def test_postfix_refuses_a_wrong_password(
    postfix: Postfix, certificates: Certificates
) -> None:
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
        async with submission(postfix, certificates, password="not-the-password"):
            pass

    assert refused.value.code == 535


async def test_postfix_delivers_a_submitted_message_for_any_domain_into_the_maildir(
    postfix: Postfix, certificates: Certificates
) -> None:
    subject = f"Verify {uuid.uuid4().hex}"
    async with submission(postfix, certificates) as smtp:
        for to in ("alice@example.com", "bob@other.test"):
            await smtp.send_message(letter(to, subject))

    def arrived() -> list[EmailMessage]:
        mine = [message for message in postfix.messages() if message["Subject"] == subject]
        return mine if len(mine) == 2 else []

    delivered = await eventually(arrived, timeout=30, message="both messages in the Maildir")
    assert sorted(str(message["Delivered-To"]) for message in delivered) == [
        "alice@example.com",
        "bob@other.test",
    ]
    assert "sasl_username=verimail@verimail.test" in postfix.log_text()


async def test_a_second_postfix_beside_the_first_stops_and_starts_again_on_its_port(
    tmp_path: Path, postfix: Postfix, certificates: Certificates
) -> None:
    second = start_postfix(tmp_path, certificates)
    try:
        assert second.port != postfix.port
        second.stop()
        second.stop()
        with pytest.raises(OSError):
            wait_for_port(second.port, 0.5)
        second.start()

        subject = f"After restart {uuid.uuid4().hex}"
        async with submission(second, certificates) as smtp:
            await smtp.send_message(letter("carol@example.org", subject))
        await eventually(
            lambda: [m for m in second.messages() if m["Subject"] == subject],
            timeout=30,
            message="the message in the second instance's Maildir",
        )
        assert not [m for m in postfix.messages() if m["Subject"] == subject]
    finally:
        second.stop()
