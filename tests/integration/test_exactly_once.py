"""One email per signup: re-runs, concurrent runs, the outbox relay, missing users."""

from __future__ import annotations

import asyncio
import logging
import uuid

import asyncpg
import pytest
import structlog
from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from tests.support.outbox import outbox_rows
from tests.support.polling import eventually
from tests.support.services import api_client, execute, fetch_value, running_worker
from tests.support.smtp import SmtpServer
from tests.support.users import new_user
from verimail_shared import db, outbox
from verimail_shared.embedded import verification_link
from verimail_shared.jobs import (
    Queue,
    SendVerifyEmailPayload,
    TaskName,
    queue_key,
    serialize_job,
)
from verimail_shared.settings import Settings
from verimail_shared.tables import DeadTask, OutboxTask
from verimail_worker.tasks import Deps, Job, send_verify_email


class RecordsOf(logging.Handler):
    """The records one standard-library logger writes, while in a `with` block."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.DEBUG)
        self.logger = logging.getLogger(name)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> RecordsOf:
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)


async def signed_up(settings: Settings) -> dict[str, str]:
    body = new_user()
    async with api_client(settings) as client:
        assert (await client.post("/v1/create_user", json=body)).status_code == 200
    return body


async def the_link_verifies(settings: Settings, smtp_server: SmtpServer, email: str) -> None:
    async with api_client(settings) as client:
        link = smtp_server.link_to(email).removeprefix(settings.public_base_url)
        assert (await client.get(link)).json() == {"is_verified": True}


# The tests below each run the task by hand (sign up, open the dependencies, build the payload):
# alike in shape on purpose, as what differs — the fault and the runs — sits between those lines.
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


async def test_a_final_dot_without_an_answer_is_followed_by_the_same_message(
    settings: Settings, redis: ArqRedis, smtp_server: SmtpServer
) -> None:
    smtp_server.inbox.hang_ups = 1
    body = await signed_up(settings)
    deps = Deps.open(settings)
    payload = SendVerifyEmailPayload(username=body["username"], max_tries=3)
    await send_verify_email(deps, payload, Job(uuid.uuid4().hex, 1))
    await deps.close()
    first, copy = smtp_server.to(body["email"])
    assert copy["Message-ID"] == first["Message-ID"]
    assert verification_link(copy) == verification_link(first)
    link = verification_link(first)
    assert link is not None
    async with api_client(settings) as client:
        response = await client.get(link.removeprefix(settings.public_base_url))
    assert response.json() == {"is_verified": True}


async def test_an_attempt_cancelled_after_its_final_dot_still_commits_its_marker(
    settings: Settings, redis: ArqRedis, smtp_server: SmtpServer
) -> None:
    """A worker paused past its deadline between the final dot and the answer: the retry
    must find the email sent, not send a second one."""
    smtp_server.inbox.data_delay = 1.0
    body = await signed_up(settings)
    deps = Deps.open(settings)
    payload = SendVerifyEmailPayload(username=body["username"], max_tries=3)
    job_id = uuid.uuid4().hex
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await send_verify_email(deps, payload, Job(job_id, 1))
    smtp_server.inbox.data_delay = 0.0
    with structlog.testing.capture_logs() as logs:
        await send_verify_email(deps, payload, Job(job_id, 2))  # waits on the row lock
    await deps.close()
    assert len(smtp_server.to(body["email"])) == 1
    assert [e["reason"] for e in logs if e["event"] == "verify_email_skipped"] == ["already_sent"]
    await the_link_verifies(settings, smtp_server, body["email"])


async def test_a_commit_lost_after_the_servers_answer_is_written_again(
    settings: Settings, redis: ArqRedis, smtp_server: SmtpServer
) -> None:
    """PostgreSQL ends the attempt's session between the 250 and the COMMIT."""
    dsn = settings.database_url.replace("+asyncpg", "")

    async def end_the_attempts_session() -> None:
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND state = 'idle in transaction'"
            )
        finally:
            await connection.close()

    smtp_server.inbox.before_data_reply = end_the_attempts_session
    body = await signed_up(settings)
    deps = Deps.open(settings)
    payload = SendVerifyEmailPayload(username=body["username"], max_tries=3)
    job_id = uuid.uuid4().hex
    with structlog.testing.capture_logs() as logs:
        await send_verify_email(deps, payload, Job(job_id, 1))
    assert "verify_email_marked_after_failed_commit" in [e["event"] for e in logs]
    smtp_server.inbox.before_data_reply = None
    await send_verify_email(deps, payload, Job(job_id, 2))
    await deps.close()
    assert len(smtp_server.to(body["email"])) == 1
    await the_link_verifies(settings, smtp_server, body["email"])


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
    arq_lines = RecordsOf("arq.worker")
    with structlog.testing.capture_logs() as logs, arq_lines:
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
    # One line for the outcome, ours; arq's logger adds no ERROR line with a traceback to it.
    outcomes = [e for e in logs if e["event"] == "process task failed" and e["job_id"] == job_id]
    assert [e["outcome"] for e in outcomes] == ["dead_letter"]
    assert [r.getMessage() for r in arq_lines.records if job_id in r.getMessage()] == []


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
    # arq's record of a successful run
    await redis.set(f"arq:result:{done.job_id}", serialize_job({"s": True, "r": None}))
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


async def test_the_reconciler_requeues_a_lost_job_whose_arq_result_is_a_failure(
    settings: Settings, redis: ArqRedis
) -> None:
    """A failover that loses a job's key but not its queue entry makes arq record "job expired"
    without running it; arq's timeout records a failure without a retry. Neither sent anything."""
    engine = db.create_engine(settings)
    sessions = db.create_sessionmaker(engine)

    def row(name: str) -> OutboxTask:
        payload = SendVerifyEmailPayload(username=name, max_tries=1)
        return outbox.new_task(TaskName.SEND_VERIFY_EMAIL, payload, defer_seconds=60)

    expired, buried = row("expired"), row("buried")
    async with db.transaction(sessions) as session:
        session.add_all([expired, buried])
        session.add(
            DeadTask(
                job_id=buried.job_id,
                task=buried.task,
                queue=Queue.CRITICAL.value,
                payload=buried.payload,
                tries=1,
                last_error="PermanentError: no such user",
            )
        )
    failure = serialize_job({"s": False, "r": "JobExecutionFailed: job expired"})
    for job in (expired, buried):
        await redis.set(f"arq:result:{job.job_id}", failure)
    async with engine.begin() as connection:
        from sqlalchemy import text

        await connection.execute(
            text(
                "UPDATE outbox SET dispatched_at = now() - interval '2 minutes' "
                "WHERE job_id IN (:e, :b)"
            ),
            {"e": expired.job_id, "b": buried.job_id},
        )
    assert await outbox.reconcile(sessions, redis, older_than_seconds=60) == 1
    completed = await fetch_value(
        engine,
        "SELECT string_agg(job_id, ',') FROM outbox "
        "WHERE completed_at IS NOT NULL AND job_id IN (:e, :b)",
        e=expired.job_id,
        b=buried.job_id,
    )
    await engine.dispose()
    assert completed == buried.job_id
    queued_ids = {j.decode() for j in await redis.zrange(queue_key(Queue.CRITICAL), 0, -1)}
    assert queued_ids == {expired.job_id}
    assert not await redis.exists(f"arq:result:{expired.job_id}")
