"""Bad input gets the right 4xx in the Status shape; every answer carries security headers."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis

from tests.support.services import api_client
from tests.support.users import new_user
from verimail_shared.settings import Settings

CREATE = "/v1/create_user"
RESEND = "/v1/resend_verify_email"


def assert_status(response: httpx.Response, http: int, code: int) -> dict[str, Any]:
    assert response.status_code == http, response.text
    body: dict[str, Any] = response.json()
    assert set(body) == {"code", "message", "details"}
    assert body["code"] == code
    return body


async def test_the_readme_curl_form_type_with_a_json_body_still_signs_up(
    settings: Settings, redis: ArqRedis
) -> None:
    async with api_client(settings) as client:
        for content_type in ("application/x-www-form-urlencoded", None, "text/plain"):
            headers = {"Content-Type": content_type} if content_type else {}
            answer = await client.post(CREATE, content=json.dumps(new_user()), headers=headers)
            assert answer.status_code == 200, (content_type, answer.text)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data; boundary=x", b'--x\r\nContent-Disposition: form-data; name="a"'),
        ("application/xml", b"<user><username>alice</username></user>"),
        ("text/plain", b"username alice please"),
        ("application/x-www-form-urlencoded", b"username=alice&password=secret123"),
        ("image/png", b"\x89PNG\r\n"),
    ],
)
@pytest.mark.parametrize("path", [CREATE, RESEND])
async def test_a_body_that_is_clearly_not_json_is_415(
    settings: Settings, redis: ArqRedis, path: str, content_type: str, body: bytes
) -> None:
    async with api_client(settings) as client:
        answer = await client.post(path, content=body, headers={"Content-Type": content_type})
    detail = assert_status(answer, 415, 3)["details"][0]
    assert detail["field_violations"][0]["field"] == "body"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b'{"username": "alice",}',
        b"\xff\xfe\x00garbage",  # not UTF-8
        b'{"username": "\xe9t\xe9"}',  # Latin-1 inside JSON
        b"[" * 5000 + b"]" * 5000,  # deeply nested
        b'{"a":' * 2000 + b"1" + b"}" * 2000,
        b"NaN",
    ],
    ids=[
        "empty",
        "truncated",
        "trailing-comma",
        "utf16-bom",
        "latin1",
        "nested-list",
        "nested-object",
        "nan",
    ],
)
@pytest.mark.parametrize("path", [CREATE, RESEND])
async def test_malformed_or_non_utf8_json_is_400(
    settings: Settings, redis: ArqRedis, path: str, body: bytes
) -> None:
    async with api_client(settings) as client:
        answer = await client.post(path, content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["code"] == 3


@pytest.mark.parametrize(
    "body",
    [
        [],
        "alice",
        42,
        None,
        {"username": 7, "full_name": ["A"], "email": {"x": 1}, "password": True},
        {
            "username": "alice",
            "full_name": "Alice L",
            "email": "a@example.com",
            "password": 12345678,
        },
    ],
)
async def test_wrong_types_are_400_naming_the_fields(
    settings: Settings, redis: ArqRedis, body: Any
) -> None:
    async with api_client(settings) as client:
        answer = await client.post(CREATE, json=body)
    detail = assert_status(answer, 400, 3)["details"][0]
    assert detail["field_violations"]


@pytest.mark.parametrize("path", [CREATE, RESEND])
async def test_an_oversized_body_is_413_declared_or_streamed(
    settings: Settings, redis: ArqRedis, path: str
) -> None:
    big = json.dumps({"padding": "x" * (settings.max_body_bytes + 1)}).encode()

    async def stream() -> Any:
        for start in range(0, len(big), 1024):
            yield big[start : start + 1024]

    async with api_client(settings) as client:
        declared = await client.post(path, content=big)
        streamed = await client.post(path, content=stream())
    assert_status(declared, 413, 3)
    assert_status(streamed, 413, 3)


@pytest.mark.parametrize("path", ["/v1/verify_email", "/healthz", "/nowhere"])
async def test_a_very_long_query_string_is_414(
    settings: Settings, redis: ArqRedis, path: str
) -> None:
    async with api_client(settings) as client:
        answer = await client.get(f"{path}?email_id=1&secret_code={'a' * 10_000}")
    assert_status(answer, 414, 3)
    assert answer.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "query",
    [
        "email_id=1&secret_code=" + "a" * 1000,
        "email_id=" + "9" * 3000 + "&secret_code=" + "a" * 43,
        "email_id=-1&secret_code=" + "a" * 43,
        "email_id=abc&secret_code=" + "a" * 43,
        "secret_code=%FF%FE",
        "email_id=1&email_id=2&secret_code=" + "a" * 43,
    ],
)
async def test_bad_verify_parameters_are_4xx(
    settings: Settings, redis: ArqRedis, query: str
) -> None:
    async with api_client(settings) as client:
        answer = await client.get(f"/v1/verify_email?{query}")
    assert answer.status_code in {400, 404}, answer.text
    assert answer.json()["code"] in {3, 5}


async def test_security_headers_are_on_json_answers(settings: Settings, redis: ArqRedis) -> None:
    async with api_client(settings) as client:
        answers = [
            await client.get("/healthz"),
            await client.post(CREATE, content=b"{"),
            await client.get("/nowhere"),
        ]
    for answer in answers:
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert (
            answer.headers["content-security-policy"]
            == "default-src 'none'; frame-ancestors 'none'"
        )
        assert answer.headers["cache-control"] == "no-store"
        assert "strict-transport-security" not in answer.headers  # http:// base URL


async def test_the_verification_page_has_a_restrictive_csp(
    settings: Settings, redis: ArqRedis
) -> None:
    async with api_client(settings) as client:
        page = await client.get(
            f"/v1/verify_email?email_id=1&secret_code={'a' * 43}",
            headers={"Accept": "text/html"},
        )
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert csp.startswith("default-src 'none'; style-src 'sha256-")
    assert "script-src" not in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp
    assert page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-store"


async def test_https_deployments_get_hsts(settings: Settings, redis: ArqRedis) -> None:
    settings = settings.model_copy(update={"public_base_url": "https://verimail.example"})
    async with api_client(settings) as client:
        answer = await client.get("/healthz")
    assert answer.headers["strict-transport-security"].startswith("max-age=")


async def test_cors_is_off_unless_origins_are_set(settings: Settings, redis: ArqRedis) -> None:
    preflight = {
        "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    async with api_client(settings) as client:
        closed = await client.options(CREATE, headers=preflight)
        simple = await client.get("/healthz", headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in closed.headers
    assert "access-control-allow-origin" not in simple.headers

    opened = settings.model_copy(update={"cors_origins": ["https://app.example"]})
    async with api_client(opened) as client:
        allowed = await client.options(CREATE, headers=preflight)
        other = await client.options(
            CREATE, headers={**preflight, "Origin": "https://evil.example"}
        )
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in other.headers


async def test_metrics_leave_the_api_port_when_a_metrics_port_is_set(
    settings: Settings, redis: ArqRedis
) -> None:
    async with api_client(settings) as client:
        assert (await client.get("/metrics")).status_code == 200
    separate = settings.model_copy(update={"api_metrics_port": 9464})
    async with api_client(separate) as client:
        assert_status(await client.get("/metrics"), 404, 5)


async def test_the_openapi_document_describes_every_route(
    settings: Settings, redis: ArqRedis
) -> None:
    from verimail_api.app import create_app

    async with api_client(settings) as client:
        served = await client.get("/openapi.json")
    assert served.status_code == 200
    paths = served.json()["paths"]
    app = create_app(settings)
    routes = {getattr(r, "path", "").replace("{id:int}", "{id}") for r in app.routes}
    assert routes == set(paths)
    for operations in paths.values():
        for operation in operations.values():
            assert any(code.startswith("4") for code in operation["responses"])
