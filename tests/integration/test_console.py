"""The operator console over HTTP: sign-in, sessions, CSRF, bad input, idempotent actions."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from arq.connections import ArqRedis
from pydantic import SecretStr
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.services import api_client, database
from tests.support.users import new_user
from verimail_api.app import create_app
from verimail_shared import queue
from verimail_shared.jobs import TaskName
from verimail_shared.settings import Settings

TOKEN = "console-T0ken-0123456789abcdef"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def with_token(settings: Settings, **more: object) -> Settings:
    return settings.model_copy(update={"admin_token": SecretStr(TOKEN), **more})


def csrf_of(html: str) -> str:
    match = CSRF.search(html)
    assert match, "no CSRF field on the page"
    return match[1]


async def sign_in(client: httpx.AsyncClient, token: str = TOKEN) -> httpx.Response:
    form = await client.get("/admin/login")
    return await client.post(
        "/admin/login", data={"token": token, "csrf": csrf_of(form.text)}, follow_redirects=False
    )


async def insert_dead(engine: AsyncEngine, job_id: str, error: str) -> int:
    async with engine.begin() as connection:
        result = await connection.execute(
            text(
                "INSERT INTO dead_tasks (job_id, task, queue, payload, tries, last_error) "
                "VALUES (:job_id, 'send_verify_email', 'critical', :payload, 2, :error) "
                "RETURNING id"
            ),
            {"job_id": job_id, "payload": '{"username": "u", "max_tries": 2}', "error": error},
        )
        return int(result.scalar_one())


@pytest.fixture
async def console(settings: Settings, redis: ArqRedis) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(with_token(settings)) as client:
        assert (await sign_in(client)).status_code == 303
        yield client


async def test_the_console_does_not_exist_without_an_admin_token(
    settings: Settings, redis: ArqRedis
) -> None:
    async with api_client(settings) as client:
        assert (await client.get("/admin/")).status_code == 404
        assert (await client.get("/admin/login")).status_code == 404


async def test_signed_out_pages_redirect_to_the_login_form_with_one_password_field(
    settings: Settings, redis: ArqRedis
) -> None:
    async with api_client(with_token(settings)) as client:
        response = await client.get("/admin/", follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/admin/login"
        form = await client.get("/admin/login")
    assert re.findall(r'<input[^>]+type="password"[^>]*>', form.text)
    assert 'name="token"' in form.text


async def test_a_right_token_starts_a_strict_http_only_session_cookie(
    settings: Settings, redis: ArqRedis
) -> None:
    async with api_client(with_token(settings)) as client:
        response = await sign_in(client)
        cookie = next(
            c for c in response.headers.get_list("set-cookie") if c.startswith("verimail_console=")
        )
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
        overview = await client.get("/admin/")
    assert overview.status_code == 200 and "Live workers" in overview.text


async def test_the_session_cookie_is_secure_when_the_public_url_is_https(
    settings: Settings, redis: ArqRedis
) -> None:
    settings = with_token(settings, public_base_url="https://verimail.example")
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="https://testserver"
        ) as client,
    ):
        response = await sign_in(client)
    assert any(
        "Secure" in c
        for c in response.headers.get_list("set-cookie")
        if c.startswith("verimail_console=")
    )


async def test_a_wrong_token_is_refused_and_then_rate_limited(
    settings: Settings, redis: ArqRedis
) -> None:
    async with api_client(with_token(settings, rate_limit_admin_login="2/minute")) as client:
        first = await sign_in(client, "wrong-token-wrong-token")
        second = await sign_in(client, "wrong-token-wrong-token")
        third = await sign_in(client, TOKEN)
    assert first.status_code == 401 and "not right" in first.text
    assert second.status_code == 401
    assert third.status_code == 429 and "Retry-After" in third.headers
    assert "verimail_console=" not in third.headers.get("set-cookie", "")


async def test_a_post_without_the_csrf_token_is_refused_with_403(
    console: httpx.AsyncClient,
) -> None:
    response = await console.post("/admin/logout", data={})
    forged = await console.post("/admin/logout", data={"csrf": "forged"})
    assert response.status_code == 403 and forged.status_code == 403
    assert "nothing was changed" in response.text
    assert (await console.get("/admin/")).status_code == 200  # still signed in


async def test_a_login_post_without_its_csrf_token_is_refused_with_403(
    settings: Settings, redis: ArqRedis
) -> None:
    async with api_client(with_token(settings)) as client:
        response = await client.post("/admin/login", data={"token": TOKEN})
    assert response.status_code == 403


async def test_sign_out_ends_the_session_even_for_a_copied_cookie(
    console: httpx.AsyncClient,
) -> None:
    cookie = console.cookies["verimail_console"]
    page = await console.get("/admin/")
    out = await console.post("/admin/logout", data={"csrf": csrf_of(page.text)})
    assert out.status_code == 303
    console.cookies.set("verimail_console", cookie, path="/admin")
    again = await console.get("/admin/", follow_redirects=False)
    assert again.status_code == 303 and again.headers["location"] == "/admin/login"


async def test_an_idle_session_expires(settings: Settings, redis: ArqRedis) -> None:
    async with api_client(with_token(settings)) as client:
        await sign_in(client)
        keys = [k async for k in redis.scan_iter(match="verimail:console:session:*")]
        assert len(keys) == 1
        ttl = await redis.ttl(keys[0])
        assert 0 < ttl <= settings.admin_session_idle_minutes * 60
        await redis.delete(keys[0])  # what the idle timeout does
        response = await client.get("/admin/", follow_redirects=False)
    assert response.status_code == 303


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/admin/queues/nope", 404, "no queue named"),
        ("/admin/queues/critical?state=sideways", 400, "state: must be one of"),
        ("/admin/queues/critical?page=-1", 400, "page: must be a whole number"),
        ("/admin/queues/critical?page=99", 400, "page: must be from 1 to 1"),
        ("/admin/dead-letters?task=nope", 400, "task: must be one of"),
        ("/admin/dead-letters?status=zombie", 400, "status: must be one of"),
        ("/admin/dead-letters?page=abc", 400, "page: must be a whole number"),
        ("/admin/dead-letters/999999", 404, "dead letter 999999 not found"),
        ("/admin/dead-letters/99999999999999999999", 404, "not found"),
        ("/admin/lookup?q=nobody-here", 404, "no user with username or email"),
        ("/admin/lookup?q=", 400, "q: must be an email or a username"),
    ],
)
async def test_bad_input_is_a_clear_message_on_the_page(
    console: httpx.AsyncClient, path: str, status: int, message: str
) -> None:
    response = await console.get(path)
    assert response.status_code == status, response.text
    assert message in response.text
    assert response.headers["content-type"].startswith("text/html")


async def test_run_now_twice_and_delete_twice_are_idempotent(
    console: httpx.AsyncClient, settings: Settings, redis: ArqRedis
) -> None:
    fresh = await queue.enqueue(
        redis,
        TaskName.SEND_VERIFY_EMAIL,
        {"username": "x", "max_tries": 3},
        job_id="j1",
        defer_by=600,
    )
    assert fresh
    page = await console.get("/admin/queues/critical?state=deferred")
    assert "j1" in page.text
    csrf = csrf_of(page.text)
    first = await console.post("/admin/queues/critical/jobs/j1/run", data={"csrf": csrf})
    assert first.status_code == 303
    assert "is due now" in (await console.get(first.headers["location"])).text
    second = await console.post("/admin/queues/critical/jobs/j1/run", data={"csrf": csrf})
    assert "was due already" in (await console.get(second.headers["location"])).text
    deleted = await console.post("/admin/queues/critical/jobs/j1/delete", data={"csrf": csrf})
    assert "deleted" in (await console.get(deleted.headers["location"])).text
    again = await console.post("/admin/queues/critical/jobs/j1/delete", data={"csrf": csrf})
    assert "not in queue critical any more" in (await console.get(again.headers["location"])).text
    assert await redis.zcard("arq:queue:critical") == 0
    assert not await redis.exists("arq:job:j1")


async def test_requeueing_a_dead_letter_twice_queues_it_once(
    console: httpx.AsyncClient, settings: Settings, redis: ArqRedis
) -> None:
    async with database(settings) as engine:
        dead_id = await insert_dead(engine, "dead-1", "550 mailbox unavailable")
    page = await console.get(f"/admin/dead-letters/{dead_id}")
    assert "550 mailbox unavailable" in page.text
    csrf = csrf_of(page.text)
    first = await console.post(f"/admin/dead-letters/{dead_id}/requeue", data={"csrf": csrf})
    assert "re-queued as job dead-1" in (await console.get(first.headers["location"])).text
    second = await console.post(f"/admin/dead-letters/{dead_id}/requeue", data={"csrf": csrf})
    assert "re-queued already" in (await console.get(second.headers["location"])).text
    assert await redis.zcard("arq:queue:critical") == 1


async def test_requeue_all_matching_takes_only_the_filtered_letters(
    console: httpx.AsyncClient, settings: Settings, redis: ArqRedis
) -> None:
    async with database(settings) as engine:
        for index in range(5):
            error = "550 no such user" if index % 2 == 0 else "timeout"
            await insert_dead(engine, f"match-{index}", error)
    page = await console.get("/admin/dead-letters?error=550")
    assert page.text.count("Dead letter ") == 3
    response = await console.post(
        "/admin/dead-letters/requeue", data={"csrf": csrf_of(page.text), "error": "550"}
    )
    assert "3 dead letters re-queued" in (await console.get(response.headers["location"])).text
    assert await redis.zcard("arq:queue:critical") == 3


async def test_lookup_finds_a_signup_by_email_in_any_case(
    console: httpx.AsyncClient, settings: Settings, redis: ArqRedis
) -> None:
    body = new_user()
    created = await console.post("/v1/create_user", json=body)
    assert created.status_code == 200
    page = await console.get("/admin/lookup", params={"q": body["email"].upper()})
    assert page.status_code == 200
    assert body["username"] in page.text and "Outbox row written" in page.text
    assert "password" not in page.text.lower().replace('type="password"', "")


async def test_admin_port_serves_the_console_and_the_api_port_does_not(
    settings: Settings, redis: ArqRedis
) -> None:
    settings = with_token(settings, admin_port=1)
    public, operator = create_app(settings), create_app(settings, admin_only=True)
    paths = {getattr(r, "path", "") for r in public.routes}
    assert "/admin/" not in paths and "/v1/admin/queues" not in paths
    operator_paths = {getattr(r, "path", "") for r in operator.routes}
    assert {"/admin/", "/admin/login", "/v1/admin/queues"} <= operator_paths
    assert "/v1/create_user" not in operator_paths
