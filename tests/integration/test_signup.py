"""POST /v1/create_user against real PostgreSQL and Redis."""

from __future__ import annotations

import json
import time

import structlog
from arq.connections import ArqRedis
from sqlalchemy import text

from tests.conftest import make_settings
from tests.support.services import api_client, database, fetch_one, fetch_value
from tests.support.smtp import SmtpServer
from tests.support.users import new_user
from verimail_shared.embedded import free_port
from verimail_shared.jobs import Queue, TaskName, queue_key
from verimail_shared.settings import Settings


async def test_signup_stores_a_hashed_password_and_enqueues_one_deferred_job(
    settings: Settings, redis: ArqRedis
) -> None:
    settings = settings.model_copy(update={"verify_email_defer_seconds": 10})
    body = new_user()
    before_ms = time.time() * 1000
    async with api_client(settings) as client:
        response = await client.post("/v1/create_user", json=body)

    assert response.status_code == 200, response.text
    user = response.json()["user"]
    assert user["username"] == body["username"]
    assert user["email"] == body["email"]
    assert user["full_name"] == body["full_name"]
    assert user["is_email_verified"] is False
    assert user["password_changed_at"] == "0001-01-01T00:00:00Z"
    assert user["created_at"].endswith("Z")
    assert set(user) == {
        "username",
        "full_name",
        "email",
        "is_email_verified",
        "password_changed_at",
        "created_at",
    }
    assert body["password"] not in response.text and "argon2" not in response.text

    async with database(settings) as engine:
        row = await fetch_one(engine, "SELECT * FROM users WHERE username = :u", u=body["username"])
    assert row["hashed_password"].startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert body["password"] not in row["hashed_password"]

    jobs = await redis.zrange(queue_key(Queue.CRITICAL), 0, -1, withscores=True)
    assert len(jobs) == 1
    job_id, score = jobs[0]
    assert before_ms + 9_000 < score < time.time() * 1000 + 10_500  # deferred by ~10 s
    async with database(settings) as engine:
        task = await fetch_one(engine, "SELECT * FROM outbox WHERE job_id = :j", j=job_id.decode())
    assert task["payload"]["username"] == body["username"]
    assert task["dispatched_at"] is not None
    assert abs(task["due_at"].timestamp() * 1000 - score) < 100  # _defer_by the time left
    job = json.loads(await redis.get(b"arq:job:" + job_id))
    assert job["f"] == TaskName.SEND_VERIFY_EMAIL
    assert job["a"][0]["username"] == body["username"]
    assert job["a"][0]["max_tries"] == settings.verify_email_max_tries
    assert job["a"][0]["request_id"] == response.headers["x-request-id"]
    assert await redis.zcard(queue_key(Queue.DEFAULT)) == 0


async def test_camel_case_fields_are_accepted_and_unknown_fields_ignored(
    settings: Settings, redis: ArqRedis
) -> None:
    body = new_user()
    camel = {
        "username": body["username"],
        "fullName": body["full_name"],
        "email": body["email"],
        "password": body["password"],
        "favourite_colour": "blue",
    }
    async with api_client(settings) as client:
        response = await client.post("/v1/create_user", json=camel)
    assert response.status_code == 200, response.text
    assert response.json()["user"]["full_name"] == body["full_name"]


async def test_duplicate_username_is_rejected_with_409(settings: Settings, redis: ArqRedis) -> None:
    body = new_user()
    async with api_client(settings) as client:
        assert (await client.post("/v1/create_user", json=body)).status_code == 200
        again = await client.post(
            "/v1/create_user", json={**body, "email": "other." + body["email"]}
        )
    assert again.status_code == 409
    assert again.json() == {"code": 6, "message": "username already exists", "details": []}
    assert await redis.zcard(queue_key(Queue.CRITICAL)) == 1


async def test_duplicate_email_is_rejected_with_409(settings: Settings, redis: ArqRedis) -> None:
    body = new_user()
    async with api_client(settings) as client:
        assert (await client.post("/v1/create_user", json=body)).status_code == 200
        again = await client.post(
            "/v1/create_user", json={**body, "username": body["username"] + "_2"}
        )
    assert again.status_code == 409
    assert again.json() == {"code": 6, "message": "email already exists", "details": []}
    async with database(settings) as engine:  # nothing of the refused signup was written
        users = await fetch_value(
            engine, "SELECT count(*) FROM users WHERE email = :e", e=body["email"]
        )
        tasks = await fetch_value(
            engine,
            "SELECT count(*) FROM outbox WHERE payload->>'username' = :u",
            u=body["username"] + "_2",
        )
    assert (users, tasks) == (1, 0)


async def test_every_invalid_field_is_reported_at_once(settings: Settings, redis: ArqRedis) -> None:
    body = {"username": "A!", "full_name": "R2-D2", "email": "not-an-email", "password": "short"}
    async with api_client(settings) as client:
        response = await client.post("/v1/create_user", json=body)
    assert response.status_code == 400
    error = response.json()
    assert error["code"] == 3
    (detail,) = error["details"]
    assert detail["@type"] == "type.googleapis.com/google.rpc.BadRequest"
    fields = {v["field"] for v in detail["field_violations"]}
    assert fields == {"username", "full_name", "email", "password"}
    assert await redis.zcard(queue_key(Queue.CRITICAL)) == 0


async def test_malformed_json_is_a_400_not_a_500(settings: Settings, redis: ArqRedis) -> None:
    async with api_client(settings) as client:
        response = await client.post("/v1/create_user", content=b'{"username": ')
    assert response.status_code == 400
    assert response.json()["details"][0]["field_violations"][0]["field"] == "body"


async def test_redis_down_at_signup_still_signs_up_and_leaves_the_task_to_the_relay(
    database_url: str, smtp_server: SmtpServer
) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    settings = make_settings(database_url, dead_redis, smtp_server)
    body = new_user()
    async with api_client(settings) as client:
        response = await client.post("/v1/create_user", json=body)
    assert response.status_code == 200, response.text
    async with database(settings) as engine:
        task = await fetch_one(
            engine, "SELECT * FROM outbox WHERE payload->>'username' = :u", u=body["username"]
        )
        # Left undispatched, the row would be relayed by whichever test runs a relay next.
        async with engine.begin() as connection:
            await connection.execute(text("DELETE FROM outbox WHERE id = :i"), {"i": task["id"]})
    assert task["task"] == "send_verify_email"
    assert task["dispatched_at"] is None


async def test_in_transaction_mode_redis_down_is_a_503_and_leaves_no_user(
    database_url: str, smtp_server: SmtpServer
) -> None:
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    settings = make_settings(database_url, dead_redis, smtp_server, signup_enqueue="in_transaction")
    body = new_user()
    async with api_client(settings) as client:
        response = await client.post("/v1/create_user", json=body)
        ready = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["code"] == 14
    assert ready.status_code == 503
    assert ready.json()["checks"]["postgres"] == "ok"
    async with database(settings) as engine:
        count = await fetch_value(
            engine, "SELECT count(*) FROM users WHERE username = :u", u=body["username"]
        )
    assert count == 0


async def test_readyz_is_200_while_postgres_and_redis_answer(
    settings: Settings, redis: ArqRedis
) -> None:
    async with api_client(settings) as client:
        ready = await client.get("/readyz")
        alive = await client.get("/healthz")
    assert ready.status_code == 200, ready.text
    assert alive.status_code == 200


async def test_what_a_signup_binds_for_its_access_line_goes_no_further(settings: Settings) -> None:
    # The test client runs the app in this task, so a binding left behind would show here.
    structlog.contextvars.bind_contextvars(caller="test")
    try:
        async with api_client(settings) as client:
            response = await client.post("/v1/create_user", json=new_user())
        assert response.status_code == 200, response.text
        assert structlog.contextvars.get_contextvars() == {"caller": "test"}
    finally:
        structlog.contextvars.unbind_contextvars("caller")
