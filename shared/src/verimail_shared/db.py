"""Database engine and session helpers (SQLAlchemy async over asyncpg)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg
import structlog
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from verimail_shared.cli import CommandError
from verimail_shared.settings import Settings

log = structlog.get_logger(__name__)

_SCHEMES = {"postgres", "postgresql", "postgresql+asyncpg"}


def libpq_url(url: str) -> str:
    """`url` checked and in libpq's form (`postgresql://`), which asyncpg reads as psql does:
    `sslmode`, `sslrootcert`, `sslcert`, `sslkey` and the rest mean what libpq says."""
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, not {parts.scheme}://")
    return urlunsplit(parts._replace(scheme="postgresql"))


def engine_for(
    url: str, timeout: float, command_timeout: float | None = None, **pool: Any
) -> AsyncEngine:
    """An engine on `url` that is safe behind PgBouncer in any pool mode (decision 055).

    Every statement is unnamed and parsed again in the message that binds and runs it, so no
    statement outlives its message: none waits on a server connection that PgBouncer may give
    another client, and none can meet another client's parameters. The cost, one Describe round
    trip per statement, is measured in `bench/pgbouncer.py`. A connection that cannot be made
    raises `DatabaseUnavailable`, whose message names the server and the reason."""
    dsn = libpq_url(url)

    async def connect() -> asyncpg.Connection:
        try:
            return await asyncpg.connect(
                dsn,
                timeout=timeout,
                command_timeout=command_timeout,
                statement_cache_size=0,  # asyncpg's; it also re-parses each unnamed statement
            )
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            raise DatabaseUnavailable(str(_problem(url, exc))) from exc

    def creator() -> Any:
        return engine.sync_engine.dialect.loaded_dbapi.connect(
            async_creator_fn=connect,
            prepared_statement_cache_size=0,  # SQLAlchemy's
            prepared_statement_name_func=_unnamed,
        )

    engine = create_async_engine(
        "postgresql+asyncpg://",
        creator=creator,
        hide_parameters=True,  # error messages would otherwise quote password hashes
        **pool,
    )
    return engine


class DatabaseUnavailable(ConnectionError):
    """No connection to PostgreSQL; the message names the server and why."""


def _unnamed() -> str:
    return ""


def create_engine(settings: Settings, *, pre_ping: bool = True) -> AsyncEngine:
    """The engine; `pre_ping` tests each connection as it leaves the pool (one round trip), so
    that a restarted PostgreSQL's dead connections fail no request. Without it, the first use
    of a dead connection fails, and SQLAlchemy then replaces every connection of the pool."""
    timeout = settings.dependency_timeout_seconds
    return engine_for(
        settings.database_url,
        timeout,
        timeout,
        pool_size=settings.database_pool_size,
        pool_pre_ping=pre_ping,
        pool_timeout=timeout,
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


class DatabaseProblem(CommandError):
    """Why PostgreSQL cannot be used, in one line with the fix. `lasting`: waiting will not
    help (a wrong URL, password or database name), unlike a server that is not up yet."""

    def __init__(self, message: str, lasting: bool, missing_database: bool = False) -> None:
        super().__init__(message)
        self.lasting = lasting
        self.missing_database = missing_database


def wait_for_database(url: str, timeout: float, create: bool = False) -> None:
    """Return once PostgreSQL accepts a connection to `url`'s database, creating the database
    first if `create`. Raises `DatabaseProblem` at once when waiting cannot help, and after
    `timeout` seconds of a server that does not answer (Compose and Kubernetes start processes
    beside PostgreSQL; they wait rather than crash)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            asyncio.run(probe(url))
            return
        except DatabaseProblem as problem:
            if problem.missing_database and create:
                asyncio.run(create_database(url))
                continue
            if problem.lasting:
                raise
            if time.monotonic() > deadline:
                raise DatabaseProblem(f"{problem} (waited {timeout:g} s)", lasting=True) from None
            log.info("database_not_ready", error=str(problem))
            time.sleep(1)


def check_database(url: str) -> None:
    """For a long-running service at start-up: a `DatabaseProblem` at once for what waiting
    cannot fix; a server that does not answer is logged and left to the service, which rides
    out outages (its readiness fails, its tasks are retried) and must start during one too."""
    try:
        asyncio.run(probe(url))
    except DatabaseProblem as problem:
        if problem.lasting:
            raise
        log.warning("database_not_ready", error=str(problem))


async def probe(url: str) -> None:
    """Connect to `url` once (5 s at most); a `DatabaseProblem` saying why not."""
    try:
        libpq_url(url)
        urlsplit(url).port  # noqa: B018  (raises on a port that is not a number)
    except ValueError as exc:
        message = str(exc) if str(exc).startswith("DATABASE_URL") else f"DATABASE_URL: {exc}"
        raise DatabaseProblem(message, lasting=True) from None
    try:
        connection = await asyncpg.connect(libpq_url(url), timeout=5)
    except Exception as exc:
        raise _problem(url, exc) from None
    await connection.close()


async def create_database(url: str) -> None:
    """Create `url`'s database, connected to the server's maintenance database."""
    name = _parts(url)[3]
    maintenance = urlunsplit(urlsplit(libpq_url(url))._replace(path="/postgres"))
    try:
        connection = await asyncpg.connect(maintenance, timeout=5)
    except Exception as exc:
        raise _problem(maintenance, exc) from None
    try:
        quoted = '"' + name.replace('"', '""') + '"'
        await connection.execute(f"CREATE DATABASE {quoted}")
    except asyncpg.DuplicateDatabaseError:
        pass  # created meanwhile by another process
    except asyncpg.PostgresError as exc:
        raise DatabaseProblem(f'cannot create database "{name}": {exc}', lasting=True) from None
    finally:
        await connection.close()
    log.info("database_created", database=name)


def _parts(url: str) -> tuple[str, str, int, str]:
    """User, host, port and database of a checked URL, as libpq defaults them; no password."""
    parts = urlsplit(url)
    user = unquote(parts.username or "postgres")
    database = unquote(parts.path.lstrip("/")) or user
    return user, parts.hostname or "localhost", parts.port or 5432, database


def _problem(url: str, exc: BaseException) -> DatabaseProblem:
    user, host, port, name = _parts(url)
    server = f"PostgreSQL at {host}:{port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return DatabaseProblem(
            f"{server}: its certificate does not verify ({exc.verify_message}): name its CA "
            "with sslrootcert= in DATABASE_URL",
            lasting=True,
        )
    if isinstance(exc, ssl.SSLError):
        return DatabaseProblem(f"{server}: TLS failed: {exc.reason or exc}", lasting=True)
    if isinstance(exc, ValueError):
        return DatabaseProblem(f"DATABASE_URL is not valid: {exc}", lasting=True)
    if isinstance(exc, ConnectionRefusedError):
        return DatabaseProblem(f"{server} refused the connection", lasting=False)
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return DatabaseProblem(
            f'database "{name}" does not exist on {server}: create it with '
            "`verimail-migrate --create-database` (or createdb)",
            lasting=True,
            missing_database=True,
        )
    if isinstance(exc, asyncpg.InvalidPasswordError):
        return DatabaseProblem(
            f'{server} refused the password of user "{user}": fix DATABASE_URL', lasting=True
        )
    if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
        return DatabaseProblem(f"{server} refused user {user!r}: {exc}", lasting=True)
    if isinstance(exc, socket.gaierror) and exc.errno == socket.EAI_NONAME:
        return DatabaseProblem(f'DATABASE_URL names a host that is unknown: "{host}"', True)
    if isinstance(exc, OSError) and exc.strerror:
        return DatabaseProblem(f"{server} does not answer: {exc.strerror.lower()}", False)
    if isinstance(exc, TimeoutError):
        return DatabaseProblem(f"{server} does not answer: timed out", lasting=False)
    return DatabaseProblem(f"{server}: {type(exc).__name__}: {exc}", lasting=False)
