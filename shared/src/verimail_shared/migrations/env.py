"""Alembic environment: runs migrations over asyncpg with the URL from the settings."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection, pool
from sqlmodel import SQLModel

from verimail_shared import tables  # noqa: F401  (registers the tables on the metadata)
from verimail_shared.db import engine_for

target_metadata = SQLModel.metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


async def _run_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url") or ""
    engine = engine_for(url, timeout=60, poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


asyncio.run(_run_online())
