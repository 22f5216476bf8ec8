"""Outbox marks: the API's dispatch marks and the worker's completion marks, written in batches."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from arq.connections import ArqRedis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from tests.support.outbox import outbox_rows
from tests.support.polling import eventually
from tests.support.services import api_client, execute, fetch_value, running_worker
from tests.support.smtp import SmtpServer
from tests.support.users import new_user
from verimail_shared import db
from verimail_shared.jobs import Queue, queue_key
from verimail_shared.marks import Completions, DispatchedMarks, Marks
from verimail_shared.settings import Settings
from verimail_shared.tables import OutboxTask, loaded


@dataclass(frozen=True)
class Kind:
    """One kind of mark: its batcher, the outbox column it sets, and the row's field it takes."""

    marks: type[Marks[Any]]
    column: str
    key: str

    def new(self, sessions: async_sessionmaker[AsyncSession], **options: float) -> Marks[Any]:
        return self.marks(sessions, **options)

    def add(self, marks: Marks[Any], rows: list[OutboxTask]) -> None:
        for row in rows:
            marks.add(getattr(row, self.key))


@pytest.fixture(
    params=[
        Kind(DispatchedMarks, "dispatched_at", "id"),
        Kind(Completions, "completed_at", "job_id"),
    ],
    ids=["dispatched", "completed"],
)
def kind(request: pytest.FixtureRequest) -> Kind:
    """Each test of a batcher runs for the API's dispatch marks and the worker's completion marks."""
    param: Kind = request.param
    return param


@pytest.fixture
async def rows(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> AsyncIterator[list[OutboxTask]]:
    """Forty outbox rows of users that do not exist, deleted afterwards: a worker's relay in a
    later test must not find them."""
    made = await outbox_rows(sessions, *(f"m{n}" for n in range(40)))
    yield made
    await execute(engine, "DELETE FROM outbox WHERE id = ANY(:ids)", ids=_ids(made))


async def test_marks_added_together_are_written_by_one_update_at_the_latest_on_close(
    kind: Kind,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    rows: list[OutboxTask],
) -> None:
    rows = rows[:5]
    marks = kind.new(sessions, interval=3600)
    kind.add(marks, rows)
    # Closing does not wait out the interval: it marks what is waiting at once.
    async with asyncio.timeout(10):
        await marks.close()
    assert await _all_marked(engine, kind.column, rows)
    # One UPDATE: every row it marked got the same time.
    sql = f"SELECT count(DISTINCT {kind.column}) FROM outbox WHERE id = ANY(:ids)"  # noqa: S608
    assert await fetch_value(engine, sql, ids=_ids(rows)) == 1


async def test_a_mark_added_while_an_update_runs_is_written_by_the_next_one(
    kind: Kind,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    rows: list[OutboxTask],
) -> None:
    marks = kind.new(sessions, interval=0.005)
    for row in rows:  # a steady trickle: some arrive while an UPDATE is under way
        kind.add(marks, [row])
        await asyncio.sleep(0.002)
    await eventually(
        lambda: _all_marked(engine, kind.column, rows), timeout=5, message="mark left behind"
    )
    await marks.close()


async def test_marks_that_cannot_be_written_stay_pending_and_are_written_once_postgresql_is_back(
    kind: Kind, engine: AsyncEngine, rows: list[OutboxTask]
) -> None:
    rows = rows[:3]
    nowhere = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:1/none")
    unreachable = db.create_sessionmaker(nowhere)
    marks = kind.new(unreachable, interval=0.005, retry_seconds=0.05)
    kind.add(marks, rows)
    assert not await marks.flush()
    await nowhere.dispose()
    unreachable.configure(bind=engine)  # PostgreSQL is back: the flusher's next try succeeds
    await eventually(
        lambda: _all_marked(engine, kind.column, rows), timeout=5, message="marks lost"
    )
    await marks.close()


async def test_signups_are_enqueued_before_the_answer_and_marked_dispatched_soon_after(
    settings: Settings,
    redis: ArqRedis,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    bodies = [new_user() for _ in range(5)]
    async with api_client(settings) as client:
        answers = await asyncio.gather(
            *(client.post("/v1/create_user", json=body) for body in bodies)
        )
        assert [answer.status_code for answer in answers] == [200] * 5
        assert await redis.zcard(queue_key(Queue.CRITICAL)) == 5
        rows = await _rows_of(sessions, [body["username"] for body in bodies])
        await eventually(lambda: _all_marked(engine, "dispatched_at", rows), timeout=5)


async def test_a_processed_job_gets_its_outbox_row_marked_completed(
    settings: Settings,
    redis: ArqRedis,
    smtp_server: SmtpServer,
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    body = new_user()
    async with api_client(settings) as client:
        assert (await client.post("/v1/create_user", json=body)).status_code == 200
    rows = await _rows_of(sessions, [body["username"]])
    assert not await _all_marked(engine, "completed_at", rows)
    async with running_worker(settings):
        await eventually(lambda: smtp_server.to(body["email"]))
        await eventually(lambda: _all_marked(engine, "completed_at", rows))


async def _rows_of(
    sessions: async_sessionmaker[AsyncSession], usernames: list[str]
) -> list[OutboxTask]:
    async with sessions() as session:
        found = await session.scalars(
            select(OutboxTask).where(OutboxTask.payload["username"].astext.in_(usernames))
        )
        return list(found.all())


def _ids(rows: list[OutboxTask]) -> list[int]:
    return [loaded(row.id) for row in rows]


async def _all_marked(engine: AsyncEngine, column: str, rows: list[OutboxTask]) -> bool:
    sql = f"SELECT count(*) FROM outbox WHERE id = ANY(:ids) AND {column} IS NULL"  # noqa: S608
    return bool(await fetch_value(engine, sql, ids=_ids(rows)) == 0)
