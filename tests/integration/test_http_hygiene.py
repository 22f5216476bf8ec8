"""Headers, content types and hostile bodies: always the right 4xx, never a 500."""

from __future__ import annotations

import json

import httpx
import pytest
from arq.connections import ArqRedis
from starlette.requests import Request
from starlette.responses import Response

from tests.support.services import api_client
from tests.support.users import new_user
from verimail_api.app import create_app
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


async def test_very_long_query_strings_are_400(settings: Settings, redis: ArqRedis) -> None:
    async with api_client(settings) as client:
        long_code = await client.get(f"/v1/verify_email?email_id=1&secret_code={'x' * 50_000}")
        long_id = await client.get(f"/v1/verify_email?email_id={'9' * 5000}&secret_code={'x' * 43}")
        junk = await client.get("/v1/verify_email?" + "&".join(f"k{n}=v" for n in range(3000)))
    assert [long_code.status_code, long_id.status_code, junk.status_code] == [400, 400, 400]


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
