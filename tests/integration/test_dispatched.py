"""Outbox rows are marked dispatched in batches after their jobs are enqueued."""

from __future__ import annotations

import asyncio

from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from tests.support.polling import eventually
from tests.support.services import api_client, database, fetch_value
from tests.support.users import new_user
from verimail_api.dispatched import DispatchedMarks
from verimail_shared import db, outbox
from verimail_shared.jobs import Queue, SendVerifyEmailPayload, TaskName, queue_key
from verimail_shared.settings import Settings
from verimail_shared.tables import loaded

UNMARKED = "SELECT count(*) FROM outbox WHERE id = ANY(:ids) AND dispatched_at IS NULL"
MARK_TIMES = "SELECT count(DISTINCT dispatched_at) FROM outbox WHERE id = ANY(:ids)"


async def test_signups_are_enqueued_before_the_answer_and_marked_dispatched_soon_after(
    settings: Settings, redis: ArqRedis
) -> None:
    bodies = [new_user() for _ in range(5)]
    async with api_client(settings) as client, database(settings) as engine:
        answers = await asyncio.gather(
            *(client.post("/v1/create_user", json=body) for body in bodies)
        )
        assert [answer.status_code for answer in answers] == [200] * 5
        assert await redis.zcard(queue_key(Queue.CRITICAL)) == 5
        ids = await fetch_value(
            engine,
            "SELECT array_agg(id) FROM outbox WHERE payload->>'username' = ANY(:u)",
            u=[body["username"] for body in bodies],
        )
        await eventually(lambda: _all_marked(engine, ids), timeout=5, message="rows not marked")


async def test_marks_added_together_are_written_by_one_update_at_the_latest_on_close(
    settings: Settings,
) -> None:
    async with database(settings) as engine:
        sessions = db.create_sessionmaker(engine)
        ids = await _outbox_rows(sessions, 5)
        marks = DispatchedMarks(sessions, delay=3600)
        for outbox_id in ids:
            marks.add(outbox_id)
        # Closing does not wait out the delay: it marks what is waiting at once.
        async with asyncio.timeout(10):
            await marks.close()
        assert await _all_marked(engine, ids)
        # One UPDATE, in one transaction: now() is the same for every row it marked.
        assert await fetch_value(engine, MARK_TIMES, ids=ids) == 1


async def test_a_mark_added_while_an_update_runs_is_written_by_the_next_one(
    settings: Settings,
) -> None:
    async with database(settings) as engine:
        sessions = db.create_sessionmaker(engine)
        ids = await _outbox_rows(sessions, 40)
        marks = DispatchedMarks(sessions, delay=0.005)
        for outbox_id in ids:  # a steady trickle: some arrive while an UPDATE is under way
            marks.add(outbox_id)
            await asyncio.sleep(0.002)
        await eventually(lambda: _all_marked(engine, ids), timeout=5, message="mark left behind")
        await marks.close()


async def _outbox_rows(sessions: async_sessionmaker[AsyncSession], count: int) -> list[int]:
    payloads = [SendVerifyEmailPayload(username=f"m{n}", max_tries=1) for n in range(count)]
    rows = [outbox.new_task(TaskName.SEND_VERIFY_EMAIL, payload, 0) for payload in payloads]
    async with db.transaction(sessions) as session:
        session.add_all(rows)
    return [loaded(row.id) for row in rows]


async def _all_marked(engine: AsyncEngine, ids: list[int]) -> bool:
    return bool(await fetch_value(engine, UNMARKED, ids=ids) == 0)
