"""Creating and dropping the per-process test databases."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import asyncpg

from verimail_shared.db import libpq_url


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(libpq_url(url))._replace(path=f"/{name}"))


async def create_database(admin_url: str, name: str) -> str:
    await _run_as_admin(admin_url, f'CREATE DATABASE "{name}"')
    return with_database(admin_url, name)


async def drop_database(admin_url: str, name: str) -> None:
    await _run_as_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def empty_task_tables(url: str) -> None:
    """Forget every other test's outbox rows and dead letters: a worker's relay or reconciler
    would otherwise enqueue them again, and counts of dead letters would include them."""
    connection = await asyncpg.connect(libpq_url(url))
    try:
        await connection.execute("TRUNCATE outbox, dead_tasks")
    finally:
        await connection.close()


async def _run_as_admin(admin_url: str, statement: str) -> None:
    connection = await asyncpg.connect(libpq_url(admin_url))
    try:
        await connection.execute(statement)
    finally:
        await connection.close()
