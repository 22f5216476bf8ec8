"""Admin routes: off without ADMIN_TOKEN, bearer token required with it."""

from __future__ import annotations

import pytest
from arq.connections import ArqRedis
from pydantic import SecretStr

from tests.support.services import api_client
from verimail_shared.settings import Settings

ROUTES = [
    ("GET", "/v1/admin/dead_tasks"),
    ("GET", "/v1/admin/queues"),
    ("POST", "/v1/admin/dead_tasks/1/retry"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_admin_routes_do_not_exist_without_a_token(
    settings: Settings, redis: ArqRedis, method: str, path: str
) -> None:
    async with api_client(settings) as client:
        response = await client.request(method, path, headers={"Authorization": "Bearer x"})
    assert response.status_code == 404
    assert response.json()["code"] == 5


async def test_an_empty_admin_token_leaves_the_admin_routes_off(
    settings: Settings, redis: ArqRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADMIN_TOKEN", "")  # as .env.example offers it
    settings = Settings(_env_file=None, **settings.model_dump(exclude={"admin_token"}))
    async with api_client(settings) as client:
        response = await client.get("/v1/admin/dead_tasks", headers={"Authorization": "Bearer "})
    assert response.status_code == 404


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize("header", [None, "Bearer wrong-token", "Basic c2VjcmV0", "Bearer "])
async def test_admin_routes_refuse_a_missing_or_wrong_token_with_401(
    settings: Settings, redis: ArqRedis, method: str, path: str, header: str | None
) -> None:
    settings = settings.model_copy(update={"admin_token": SecretStr("s3cret-admin-token")})
    headers = {"Authorization": header} if header else {}
    async with api_client(settings) as client:
        response = await client.request(method, path, headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == 16
    assert response.headers["www-authenticate"] == "Bearer"
    assert "s3cret" not in response.text


async def test_queues_count_ready_deferred_in_progress_and_dead(
    settings: Settings, redis: ArqRedis
) -> None:
    settings = settings.model_copy(update={"admin_token": SecretStr("tok")})
    await redis.enqueue_job("x", {}, _queue_name="arq:queue:default")
    await redis.enqueue_job("x", {}, _queue_name="arq:queue:default", _defer_by=60)
    running = await redis.enqueue_job("x", {}, _queue_name="arq:queue:critical")
    assert running is not None
    await redis.set(f"arq:in-progress:{running.job_id}", b"1")
    async with api_client(settings) as client:
        response = await client.get("/v1/admin/queues", headers={"Authorization": "Bearer tok"})
    queues = {q["name"]: q for q in response.json()["queues"]}
    assert queues["default"]["ready"] == 1 and queues["default"]["deferred"] == 1
    assert queues["critical"]["in_progress"] == 1 and queues["critical"]["ready"] == 0
    assert set(queues["critical"]) == {"name", "ready", "deferred", "in_progress", "dead"}


async def test_a_bad_limit_is_a_400_naming_the_field(settings: Settings, redis: ArqRedis) -> None:
    settings = settings.model_copy(update={"admin_token": SecretStr("tok")})
    async with api_client(settings) as client:
        response = await client.get(
            "/v1/admin/dead_tasks?limit=abc", headers={"Authorization": "Bearer tok"}
        )
    assert response.status_code == 400
    assert response.json()["details"][0]["field_violations"][0]["field"] == "limit"
