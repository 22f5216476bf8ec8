"""Database engine and session helpers (SQLAlchemy async over asyncpg)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from verimail_shared.settings import Settings

_SCHEMES = {"postgres", "postgresql", "postgresql+asyncpg"}


def async_url(url: str) -> str:
    """Turn the plain `postgresql://` URL that hosting platforms give into an asyncpg one."""
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, not {parts.scheme}://")
    # libpq's sslmode is spelled ssl for asyncpg.
    query = [("ssl" if k == "sslmode" else k, v) for k, v in parse_qsl(parts.query)]
    return urlunsplit(parts._replace(scheme="postgresql+asyncpg", query=urlencode(query)))


def plain_url(url: str) -> str:
    """The libpq form of a database URL (for asyncpg.connect and psql)."""
    return urlunsplit(urlsplit(url)._replace(scheme="postgresql"))


def create_engine(settings: Settings, *, pre_ping: bool = True) -> AsyncEngine:
    """The engine; `pre_ping` tests each connection as it leaves the pool (one round trip), so
    that a restarted PostgreSQL's dead connections fail no request. Without it, the first use
    of a dead connection fails, and SQLAlchemy then replaces every connection of the pool."""
    timeout = settings.dependency_timeout_seconds
    return create_async_engine(
        async_url(settings.database_url),
        pool_size=settings.database_pool_size,
        pool_pre_ping=pre_ping,
        hide_parameters=True,  # error messages would otherwise quote password hashes
        pool_timeout=timeout,
        connect_args={"timeout": timeout, "command_timeout": timeout},
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def transaction(
    sessions: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """One unit of work: commits when the block ends, rolls back when it raises."""
    async with sessions() as session, session.begin():
        yield session
