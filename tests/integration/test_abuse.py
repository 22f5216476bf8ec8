"""Rate limits shared through Redis, and a resend that does not tell who has an account."""

from __future__ import annotations

import structlog
from arq.connections import ArqRedis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.polling import eventually
from tests.support.services import api_client, database, running_worker
from tests.support.smtp import SmtpServer
from tests.support.users import new_user
from verimail_shared.jobs import Queue, queue_key
from verimail_shared.settings import Settings


async def test_create_user_over_the_limit_is_429_with_retry_after(
    settings: Settings, redis: ArqRedis
) -> None:
    settings = settings.model_copy(update={"rate_limit_create_user": "2/minute"})
    async with api_client(settings) as client:
        answers = [await client.post("/v1/create_user", json=new_user()) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[2].json()["code"] == 8
    assert 1 <= int(answers[2].headers["retry-after"]) <= 60


async def test_limits_are_shared_between_api_replicas(settings: Settings, redis: ArqRedis) -> None:
    settings = settings.model_copy(update={"rate_limit_verify_email": "2/minute"})
    query = f"/v1/verify_email?email_id=1&secret_code={'x' * 43}"
    async with api_client(settings) as first, api_client(settings) as second:
        codes = [(await c.get(query)).status_code for c in (first, second, first)]
    assert codes == [404, 404, 429]


async def test_forwarded_for_counts_only_behind_a_trusted_proxy(
    settings: Settings, redis: ArqRedis
) -> None:
    # httpx's ASGI transport is the peer 127.0.0.1.
    query = f"/v1/verify_email?email_id=1&secret_code={'x' * 43}"
    limited = settings.model_copy(update={"rate_limit_verify_email": "1/minute"})
    trusting = limited.model_copy(update={"trusted_proxies": ["127.0.0.0/8"]})
    with structlog.testing.capture_logs() as logs:
        async with api_client(limited) as client:
            spoofed = [
                await client.get(query, headers={"X-Forwarded-For": f"10.0.0.{n}"})
                for n in (1, 2, 3)
            ]
    assert [r.status_code for r in spoofed] == [404, 429, 429]  # the header is ignored
    warnings = [log for log in logs if log["event"] == "untrusted_x_forwarded_for"]
    assert len(warnings) == 1 and warnings[0]["peer"] == "127.0.0.1"  # once, not per request
    await redis.flushdb()
    # The same three requests through a trusted proxy: written out beside the first three so
    # the two answers read side by side.
    with structlog.testing.capture_logs() as logs:
        async with api_client(trusting) as client:
            proxied = [
                await client.get(query, headers={"X-Forwarded-For": f"10.0.0.{n}"})
                for n in (1, 2, 1)
            ]
    assert [r.status_code for r in proxied] == [404, 404, 429]  # one budget per client
    assert not [log for log in logs if log["event"] == "untrusted_x_forwarded_for"]


async def outbox_jobs(engine: AsyncEngine, username: str) -> set[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT job_id FROM outbox WHERE payload->>'username' = :u"), {"u": username}
        )
        return set(rows.scalars())


async def queued_jobs(redis: ArqRedis) -> set[str]:
    return {job_id.decode() for job_id in await redis.zrange(queue_key(Queue.CRITICAL), 0, -1)}


async def test_resend_answers_the_same_and_mails_only_unverified_users(
    settings: Settings, redis: ArqRedis, smtp_server: SmtpServer
) -> None:
    unverified, fence = new_user(), new_user()
    async with api_client(settings) as client, database(settings) as engine:
        for body in (unverified, fence):
            assert (await client.post("/v1/create_user", json=body)).status_code == 200
        async with running_worker(settings):
            await eventually(lambda: smtp_server.to(fence["email"]))
            await eventually(lambda: smtp_server.to(unverified["email"]))
            known = await client.post(
                "/v1/resend_verify_email", json={"email": unverified["email"]}
            )
            unknown = await client.post(
                "/v1/resend_verify_email", json={"email": "nobody.at.all@example.com"}
            )
            await eventually(lambda: len(smtp_server.to(unverified["email"])) == 2)
            link = smtp_server.to(unverified["email"])[1]
            from verimail_shared.embedded import verification_link

            second_link = verification_link(link)
            assert second_link is not None
            verified = await client.get(second_link.removeprefix(settings.public_base_url))
            assert verified.json() == {"is_verified": True}

        # No worker from here on: whatever is enqueued stays in the queue. Other tests' outbox
        # rows share this database (the reconciler may queue them again): look at ours only.
        async def ours_queued() -> set[str]:
            ours = await outbox_jobs(engine, unverified["username"])
            return await queued_jobs(redis) & (ours | await outbox_jobs(engine, fence["username"]))

        assert await ours_queued() == set()
        jobs_before = await outbox_jobs(engine, unverified["username"])
        after = await client.post("/v1/resend_verify_email", json={"email": unverified["email"]})
        # A fence: a resend for an unverified user, asked after. Its lookup runs after the
        # verified user's, so once its task is queued a wrong task for the verified user is too.
        await client.post("/v1/resend_verify_email", json={"email": fence["email"]})

        async def fence_queued() -> set[str]:
            return await queued_jobs(redis) & await outbox_jobs(engine, fence["username"])

        fence_jobs = await eventually(fence_queued, message="the fence's resend queued nothing")
        assert await outbox_jobs(engine, unverified["username"]) == jobs_before
        assert await ours_queued() == fence_jobs
    assert (known.status_code, known.text) == (unknown.status_code, unknown.text) == (200, "{}")
    assert (after.status_code, after.text) == (200, "{}")
    assert len(jobs_before) == 2  # the signup and the resend before verification
    assert len(smtp_server.to(unverified["email"])) == 2  # none after verification
    assert smtp_server.to("nobody.at.all@example.com") == []


async def test_resend_is_limited_per_address_whatever_the_client(
    settings: Settings, redis: ArqRedis
) -> None:
    settings = settings.model_copy(
        update={
            "rate_limit_resend_email": "2/hour",
            "trusted_proxies": ["127.0.0.0/8"],
        }
    )
    async with api_client(settings) as client:
        codes = [
            (
                await client.post(
                    "/v1/resend_verify_email",
                    json={"email": "Target@Example.com"},
                    headers={"X-Forwarded-For": f"10.1.0.{n}"},
                )
            ).status_code
            for n in range(3)
        ]
        invalid = await client.post("/v1/resend_verify_email", json={"email": "nope"})
    assert codes == [200, 200, 429]
    assert invalid.status_code == 400
