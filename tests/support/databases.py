"""Creating and dropping the per-process test databases."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import asyncpg

from verimail_shared.db import plain_url


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(plain_url(url))._replace(path=f"/{name}"))


async def create_database(admin_url: str, name: str) -> str:
    connection = await asyncpg.connect(plain_url(admin_url))
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return with_database(admin_url, name)


async def drop_database(admin_url: str, name: str) -> None:
    connection = await asyncpg.connect(plain_url(admin_url))
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()
