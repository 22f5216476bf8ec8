"""One email per signup: re-runs, concurrent runs, the outbox relay, missing users."""

from __future__ import annotations

import asyncio
import uuid

import structlog
from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from tests.support.outbox import outbox_rows
from tests.support.polling import eventually
from tests.support.services import api_client, execute, fetch_value, running_worker
from tests.support.smtp import SmtpServer
from tests.support.users import new_user
from verimail_shared import outbox
from verimail_shared.jobs import Queue, SendVerifyEmailPayload, TaskName, queue_key
from verimail_shared.settings import Settings
from verimail_worker.tasks import Deps, Job, send_verify_email


async def signed_up(settings: Settings) -> dict[str, str]:
    body = new_user()
    async with api_client(settings) as client:
        assert (await client.post("/v1/create_user", json=body)).status_code == 200
    return body


async def test_a_rerun_of_a_job_whose_email_was_sent_sends_nothing(
    settings: Settings, redis: ArqRedis, smtp_server: SmtpServer
) -> None:
    body = await signed_up(settings)
    deps = Deps.open(settings)
    payload = SendVerifyEmailPayload(username=body["username"], max_tries=3)
    job = Job(id=uuid.uuid4().hex, try_=1)
    await send_verify_email(deps, payload, job)
    with structlog.testing.capture_logs() as logs:
        await send_verify_email(deps, payload, Job(id=job.id, try_=2))
    await deps.close()
    assert len(smtp_server.to(body["email"])) == 1
    assert [e["reason"] for e in logs if e["event"] == "verify_email_skipped"] == ["already_sent"]


async def test_concurrent_runs_of_one_job_send_one_email_with_a_working_code(
    settings: Settings, redis: ArqRedis, smtp_server: SmtpServer
) -> None:
    smtp_server.inbox.rcpt_delay = 0.2
    body = await signed_up(settings)
    deps = Deps.open(settings)
    payload = SendVerifyEmailPayload(username=body["username"], max_tries=3)
    job_id = uuid.uuid4().hex
    await asyncio.gather(*(send_verify_email(deps, payload, Job(job_id, n)) for n in (1, 2, 3)))
    await deps.close()
    assert len(smtp_server.to(body["email"])) == 1
    link = smtp_server.link_to(body["email"])
    async with api_client(settings) as client:
        response = await client.get(link.removeprefix(settings.public_base_url))
    assert response.json() == {"is_verified": True}


async def test_a_defer_of_zero_is_safe_the_worker_never_runs_before_the_commit(
    settings: Settings, redis: ArqRedis, smtp_server: SmtpServer
) -> None:
    assert settings.verify_email_defer_seconds == 0
    with structlog.testing.capture_logs() as logs:
        async with running_worker(settings):
            bodies = [await signed_up(settings) for _ in range(10)]
            await eventually(lambda: all(smtp_server.to(b["email"]) for b in bodies))
    assert [e for e in logs if e["event"] == "process task failed"] == []
    assert all(len(smtp_server.to(b["email"])) == 1 for b in bodies)


async def test_the_relay_enqueues_each_undispatched_row_once_even_with_several_relays(
    redis: ArqRedis, engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    names = [f"nobody_{n}" for n in range(30)]
    rows = await outbox_rows(sessions, *names, defer_seconds=60)
    relayed = await asyncio.gather(
        *(outbox.relay(sessions, redis, older_than_seconds=0, batch=7) for _ in range(6))
    )
    while await outbox.relay(sessions, redis, older_than_seconds=0):
        pass
    queued = {job_id.decode() for job_id in await redis.zrange(queue_key(Queue.CRITICAL), 0, -1)}
    assert queued == {row.job_id for row in rows}
    assert sum(relayed) <= 30
    pending = await fetch_value(engine, "SELECT count(*) FROM outbox WHERE dispatched_at IS NULL")
    assert pending == 0


async def test_a_task_for_a_user_that_does_not_exist_is_a_dead_letter_at_once(
    settings: Settings, redis: ArqRedis, smtp_server: SmtpServer, engine: AsyncEngine
) -> None:
    payload = SendVerifyEmailPayload(username=f"ghost_{uuid.uuid4().hex[:8]}", max_tries=10)
    job_id = uuid.uuid4().hex
    await redis.enqueue_job(
        TaskName.SEND_VERIFY_EMAIL,
        payload.model_dump(mode="json"),
        _job_id=job_id,
        _queue_name=queue_key(Queue.CRITICAL),
    )
    async with running_worker(settings):
        dead = await eventually(
            lambda: fetch_value(
                engine, "SELECT last_error FROM dead_tasks WHERE job_id = :j", j=job_id
            )
        )
    tries = await fetch_value(engine, "SELECT tries FROM dead_tasks WHERE job_id = :j", j=job_id)
    assert "does not exist" in dead
    assert tries == 1
    assert smtp_server.messages == []


async def test_the_reconciler_requeues_only_unfinished_jobs_that_redis_lost(
    redis: ArqRedis, engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    lost, queued, finished = await outbox_rows(
        sessions, "lost", "queued", "finished", defer_seconds=60
    )
    await outbox.enqueue(redis, queued)
    await execute(
        engine,
        "UPDATE outbox SET dispatched_at = now() - interval '2 minutes', "
        "completed_at = CASE WHEN job_id = :f THEN now() END WHERE job_id IN (:l, :q, :f)",
        l=lost.job_id,
        q=queued.job_id,
        f=finished.job_id,
    )
    assert await outbox.reconcile(sessions, redis, older_than_seconds=60) == 1
    assert await outbox.reconcile(sessions, redis, older_than_seconds=60) == 0  # checked rows wait
    queued_ids = {j.decode() for j in await redis.zrange(queue_key(Queue.CRITICAL), 0, -1)}
    assert queued_ids == {lost.job_id, queued.job_id}


async def test_the_reconciler_marks_a_finished_job_whose_completion_mark_was_lost(
    redis: ArqRedis, engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    (done,) = await outbox_rows(sessions, "done")
    await redis.set(f"arq:result:{done.job_id}", b"{}")  # arq's record of a finished job
    await execute(
        engine,
        "UPDATE outbox SET dispatched_at = now() - interval '2 minutes' WHERE job_id = :j",
        j=done.job_id,
    )
    assert await outbox.reconcile(sessions, redis, older_than_seconds=60) == 0
    completed = await fetch_value(
        engine, "SELECT completed_at IS NOT NULL FROM outbox WHERE job_id = :j", j=done.job_id
    )
    assert completed
    assert await redis.zcard(queue_key(Queue.CRITICAL)) == 0
