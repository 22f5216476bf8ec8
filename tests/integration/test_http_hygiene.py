"""Headers, content types and hostile bodies: always the right 4xx, never a 500."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator

import httpx
import pytest
from arq.connections import ArqRedis
from starlette.requests import Request
from starlette.responses import Response

from tests.support.polling import eventually
from tests.support.processes import Service
from tests.support.services import api_client
from tests.support.users import new_user
from verimail_api.app import create_app
from verimail_shared.embedded import free_port, wait_for_port
from verimail_shared.settings import Settings

HTML = {"Accept": "text/html"}


async def test_every_response_carries_the_security_headers(
    settings: Settings, redis: ArqRedis
) -> None:
    async with api_client(settings) as client:
        answers = [
            await client.get("/healthz"),
            await client.post("/v1/create_user", content=b"{"),
            await client.get("/nowhere"),
            await client.get("/v1/verify_email?email_id=1", headers=HTML),
        ]
    for answer in answers:
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
    page = answers[-1]
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert "access-control-allow-origin" not in answers[0].headers


async def test_cors_is_off_unless_origins_are_configured(
    settings: Settings, redis: ArqRedis
) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    async with api_client(settings) as client:
        closed = await client.options("/v1/create_user", headers=preflight)
    opened_settings = settings.model_copy(update={"cors_origins": ["https://app.example"]})
    async with api_client(opened_settings) as client:
        opened = await client.options("/v1/create_user", headers=preflight)
        other = await client.options(
            "/v1/create_user", headers={**preflight, "Origin": "https://evil.example"}
        )
    assert "access-control-allow-origin" not in closed.headers
    assert opened.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/xml",
        "image/png",
    ],
)
async def test_a_non_json_content_type_is_415(
    settings: Settings, redis: ArqRedis, content_type: str
) -> None:
    async with api_client(settings) as client:
        answer = await client.post(
            "/v1/create_user",
            content=json.dumps(new_user()),
            headers={"Content-Type": content_type},
        )
    assert answer.status_code == 415
    assert answer.json()["code"] == 3


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "application/json",
        "application/json; charset=utf-8",
        "application/x-www-form-urlencoded",
        "application/merge-patch+json",
    ],
)
async def test_json_and_curls_default_type_are_accepted(
    settings: Settings, redis: ArqRedis, content_type: str | None
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    async with api_client(settings) as client:
        answer = await client.post(
            "/v1/create_user", content=json.dumps(new_user()), headers=headers
        )
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{" + b" " * 20_000 + b"}", 413),  # oversized
        (b"[" * 5000 + b"]" * 5000, 400),  # deeply nested
        (b'{"username": ["a"], "full_name": {}, "email": 5, "password": null}', 400),  # wrong types
        (b'{"username": "\xff\xfe"}', 400),  # not UTF-8
        (b"\x00\x01\x02", 400),
        (b"", 400),
        (b"null", 400),
        (b'"just a string"', 400),
        (b"1e999999", 400),
    ],
)
async def test_hostile_bodies_get_the_right_4xx(
    settings: Settings, redis: ArqRedis, body: bytes, status: int
) -> None:
    async with api_client(settings) as client:
        answer = await client.post("/v1/create_user", content=body)
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"code", "message", "details"}


async def test_a_declared_oversized_body_is_refused_before_it_is_read(
    settings: Settings, redis: ArqRedis
) -> None:
    async with api_client(settings) as client:
        answer = await client.post(
            "/v1/create_user", content=b"{}", headers={"Content-Length": "999999999"}
        )
    assert answer.status_code == 413


async def test_very_long_query_strings_are_refused_in_the_error_shape(
    settings: Settings, redis: ArqRedis
) -> None:
    async with api_client(settings) as client:
        long_code = await client.get(f"/v1/verify_email?email_id=1&secret_code={'x' * 50_000}")
        long_id = await client.get(f"/v1/verify_email?email_id={'9' * 5000}&secret_code={'x' * 43}")
        junk = await client.get("/v1/verify_email?" + "&".join(f"k{n}=v" for n in range(3000)))
    assert [long_code.status_code, long_id.status_code, junk.status_code] == [414, 400, 414]
    violation = long_code.json()["details"][0]["field_violations"][0]
    assert violation == {"field": "url", "description": "must be at most 8192 bytes"}


async def test_a_wrong_method_is_405_with_an_allow_header(
    settings: Settings, redis: ArqRedis
) -> None:
    async with api_client(settings) as client:
        wrong = await client.get("/v1/create_user")
        also_wrong = await client.post("/healthz")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert wrong.json() == {"code": 12, "message": "Method Not Allowed", "details": []}
    assert set(also_wrong.headers["allow"].split(", ")) == {"GET", "HEAD"}


async def test_metrics_can_move_to_their_own_port(settings: Settings, redis: ArqRedis) -> None:
    async with api_client(settings.model_copy(update={"api_metrics_port": 9999})) as client:
        assert (await client.get("/metrics")).status_code == 404
    async with api_client(settings) as client:
        assert (await client.get("/metrics")).status_code == 200


async def test_json_answers_forbid_loading_and_caching(settings: Settings, redis: ArqRedis) -> None:
    async with api_client(settings) as client:
        answers = [await client.get("/healthz"), await client.post("/v1/create_user", content=b"{")]
    for answer in answers:
        assert (
            answer.headers["content-security-policy"]
            == "default-src 'none'; frame-ancestors 'none'"
        )
        assert answer.headers["cache-control"] == "no-store"


async def test_the_page_allows_only_its_own_hashed_style(
    settings: Settings, redis: ArqRedis
) -> None:
    async with api_client(settings) as client:
        page = await client.get(f"/v1/verify_email?email_id=1&secret_code={'x' * 43}", headers=HTML)
    policy = page.headers["content-security-policy"]
    assert policy.startswith("default-src 'none'; style-src 'sha256-")
    assert "unsafe-inline" not in policy and "script-src" not in policy


async def test_non_ascii_digits_in_the_admin_limit_are_400(
    settings: Settings, redis: ArqRedis
) -> None:
    from pydantic import SecretStr

    settings = settings.model_copy(update={"admin_token": SecretStr("tok")})
    async with api_client(settings) as client:
        answer = await client.get(
            "/v1/admin/dead_tasks?limit=%C2%B2", headers={"Authorization": "Bearer tok"}
        )
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == 3


async def test_a_bug_is_a_500_in_the_error_shape_with_every_header(
    settings: Settings, redis: ArqRedis
) -> None:
    async def boom(request: Request) -> Response:
        raise RuntimeError("a bug")

    app = create_app(settings)
    app.add_route("/boom", boom)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            answer = await client.get("/boom", headers={"X-Request-ID": "bug-1"})
    assert answer.status_code == 500
    assert answer.json() == {"code": 13, "message": "internal error", "details": []}
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert answer.headers["x-request-id"] == "bug-1"
    assert "a bug" not in answer.text


# ---------------------------------------------------------------- the real server (uvicorn)


@pytest.fixture(scope="module")
def served(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Service, int]]:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "API_PORT": str(port),
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
    }
    api = Service("verimail-api", env, tmp_path_factory.mktemp("hygiene") / "api.log")
    wait_for_port(port, 30)
    yield api, port
    api.stop()


def exchange(port: int, head: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send a raw request (with `Connection: close`); the status, headers and body answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(head)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    header_block, _, body = rest.partition(b"\r\n\r\n")
    headers = {}
    for line in header_block.split(b"\r\n"):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def get(path: str, *headers: bytes) -> bytes:
    lines = [f"GET {path} HTTP/1.1".encode(), b"Host: localhost", *headers, b"Connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n"


@pytest.mark.parametrize("size", [10_000, 100_000, 1_000_000])
def test_uvicorn_lets_the_app_refuse_a_long_query_string_with_414(
    served: tuple[Service, int], size: int
) -> None:
    _, port = served
    status, headers, body = exchange(port, get("/v1/verify_email?secret_code=" + "x" * size))
    assert status == 414
    assert headers["content-type"] == "application/json"
    assert headers["x-request-id"] and headers["x-content-type-options"] == "nosniff"
    assert json.loads(body)["details"][0]["field_violations"][0]["field"] == "url"


@pytest.mark.parametrize("size", [20_000, 100_000, 1_000_000])
def test_uvicorn_lets_the_app_refuse_oversized_headers_with_431(
    served: tuple[Service, int], size: int
) -> None:
    _, port = served
    status, headers, body = exchange(port, get("/healthz", b"X-Big: " + b"x" * size))
    assert status == 431
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["details"][0]["field_violations"][0]["field"] == "headers"


def test_uvicorn_answers_an_unparsable_request_in_the_error_shape(
    served: tuple[Service, int],
) -> None:
    _, port = served
    status, headers, body = exchange(port, b"GET /healthz HTTP/1.1\r\nHost localhost\r\n\r\n")
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {
        "code": 3,
        "message": "Invalid HTTP request received.",
        "details": [],
    }


def test_uvicorn_serves_a_405_with_its_allow_header(served: tuple[Service, int]) -> None:
    _, port = served
    status, headers, body = exchange(port, get("/v1/create_user"))
    assert (status, headers["allow"], json.loads(body)["code"]) == (405, "POST", 12)


async def test_the_server_runs_on_uvloop_and_httptools(served: tuple[Service, int]) -> None:
    api, port = served
    started = await eventually(lambda: api.events("api_started"), message="no api_started")
    serving = api.events("api_serving")
    assert started[0]["event_loop"] == "uvloop.Loop"
    assert serving[0]["http"] == "BoundedHttpToolsProtocol" and serving[0]["loop"] == "uvloop"
    assert exchange(port, get("/healthz"))[0] == 200
