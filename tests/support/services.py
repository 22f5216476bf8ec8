"""The API and the worker, in this process, against the test servers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from verimail_api.app import create_app
from verimail_shared import db
from verimail_shared.settings import Settings
from verimail_worker.worker import VerimailWorker, create_worker


@contextlib.asynccontextmanager
async def api_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


@contextlib.asynccontextmanager
async def running_worker(settings: Settings, **overrides: Any) -> AsyncIterator[VerimailWorker]:
    worker = create_worker(settings, handle_signals=False, **overrides)
    main = asyncio.create_task(worker.async_run())
    try:
        yield worker
    finally:
        # Drain like a SIGTERM would: no new jobs, let running ones finish, then close. A poll
        # that was under way when picking stopped may still start a job: wait out one more.
        worker.allow_pick_jobs = False
        deadline = asyncio.get_running_loop().time() + 10
        while asyncio.get_running_loop().time() < deadline:
            running = [task for task in worker.tasks.values() if not task.done()]
            if not running:
                await asyncio.sleep(worker.poll_delay_s * 2)
                if all(task.done() for task in worker.tasks.values()):
                    break
            await asyncio.gather(*running, return_exceptions=True)
        await worker.close()
        with contextlib.suppress(asyncio.CancelledError):
            await main


@contextlib.asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = db.create_engine(settings)
    try:
        yield engine
    finally:
        await engine.dispose()


async def fetch_one(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as connection:
        return (await connection.execute(text(sql), params)).mappings().first()


async def fetch_value(engine: AsyncEngine, sql: str, **params: Any) -> Any:
    async with engine.connect() as connection:
        return (await connection.execute(text(sql), params)).scalar()


async def execute(engine: AsyncEngine, sql: str, **params: Any) -> None:
    """Run one statement in a transaction of its own (a test's way to age or break rows)."""
    async with engine.begin() as connection:
        await connection.execute(text(sql), params)
