"""Outbox completion marks: written in batches, kept when PostgreSQL refuses them."""

from __future__ import annotations

from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.polling import eventually
from tests.support.services import api_client, database, fetch_value, running_worker
from tests.support.smtp import SmtpServer
from tests.support.users import new_user
from verimail_shared import db
from verimail_shared.settings import Settings
from verimail_worker.completions import Completions

UNFINISHED = "SELECT count(*) FROM outbox WHERE payload->>'username' = :u AND completed_at IS NULL"
FINISHED = (
    "SELECT count(*) FROM outbox WHERE payload->>'username' = :u AND completed_at IS NOT NULL"
)


async def test_a_processed_job_gets_its_outbox_row_marked_completed(
    settings: Settings, redis: ArqRedis, smtp_server: SmtpServer
) -> None:
    body = new_user()
    async with api_client(settings) as client:
        assert (await client.post("/v1/create_user", json=body)).status_code == 200
    async with database(settings) as engine:
        assert await fetch_value(engine, UNFINISHED, u=body["username"]) == 1
        async with running_worker(settings):
            await eventually(lambda: smtp_server.to(body["email"]))
            await eventually(lambda: fetch_value(engine, FINISHED, u=body["username"]))
        assert await fetch_value(engine, UNFINISHED, u=body["username"]) == 0


async def test_marks_that_cannot_be_written_stay_pending_for_the_next_flush(
    settings: Settings, redis: ArqRedis
) -> None:
    body = new_user()
    async with api_client(settings) as client:
        assert (await client.post("/v1/create_user", json=body)).status_code == 200
    async with database(settings) as engine:
        job_id = await fetch_value(
            engine, "SELECT job_id FROM outbox WHERE payload->>'username' = :u", u=body["username"]
        )
        nowhere = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
        sessions = db.create_sessionmaker(nowhere)
        completions = Completions(sessions)
        completions.add(job_id)
        assert not await completions.flush()
        await nowhere.dispose()
        sessions.configure(bind=engine)  # PostgreSQL is back
        assert await completions.flush()
        assert await fetch_value(engine, FINISHED, u=body["username"]) == 1
