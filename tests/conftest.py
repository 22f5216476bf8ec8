"""Real servers for the tests: from DATABASE_URL / REDIS_URL when set, else throwaway ones.

Each pytest process (and each xdist worker) gets its own database and its own Redis
database; each test that touches Redis starts from an empty one.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from tests.support.databases import create_database, drop_database, empty_task_tables
from tests.support.services import database
from tests.support.smtp import SmtpServer
from verimail_shared import db, queue
from verimail_shared.embedded import EmbeddedPostgres, EmbeddedRedis
from verimail_shared.migrate import upgrade
from verimail_shared.settings import Settings

pytest_plugins = ["tests.support.browser"]


@pytest.fixture(scope="session")
def postgres_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server on which the tests may create databases."""
    if url := os.environ.get("DATABASE_URL"):
        yield url
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("postgres"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def database_url(postgres_admin_url: str) -> Iterator[str]:
    """A migrated database of this test process's own."""
    name = f"verimail_test_{uuid.uuid4().hex[:12]}"
    url = asyncio.run(create_database(postgres_admin_url, name))
    upgrade(Settings(_env_file=None, database_url=url))
    yield url
    asyncio.run(drop_database(postgres_admin_url, name))


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Iterator[str]:
    if url := os.environ.get("REDIS_URL"):
        # A shared server: each xdist worker takes a database of its own, counting down from 15.
        index = 15 - (int(worker_id.removeprefix("gw")) if worker_id != "master" else 0)
        yield url.rsplit("/", 1)[0] + f"/{index}" if url.count("/") > 2 else f"{url}/{index}"
        return
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), appendonly=False)
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
async def smtp_server(tmp_path: Path) -> AsyncIterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def settings(database_url: str, redis_url: str, smtp_server: SmtpServer) -> Settings:
    """Settings pointing at the test servers, with short delays so tests run fast; no other
    test's queued work is left in the database."""
    await empty_task_tables(database_url)
    return make_settings(database_url, redis_url, smtp_server)


def make_settings(
    database_url: str, redis_url: str, smtp: SmtpServer, **overrides: object
) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": redis_url,
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp.port,
        "smtp_timeout_seconds": 5,
        "verify_email_defer_seconds": 0,
        "retry_backoff_base_seconds": 0.05,
        "retry_backoff_max_seconds": 0.5,
        "worker_poll_delay_seconds": 0.02,
        "dependency_timeout_seconds": 2,
        "argon2_memory_kib": 19456,
        "verify_code_key": "test-verify-code-key-0123456789",
        # Tests sign many users up from one address; the limits have tests of their own.
        "rate_limit_create_user": "off",
        "rate_limit_verify_email": "off",
        "rate_limit_resend_ip": "off",
        "rate_limit_resend_email": "off",
        **overrides,
    }
    return Settings(_env_file=None, **values)


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[ArqRedis]:
    client = queue.connect(settings)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    """An engine on the test database, disposed of after the test."""
    async with database(settings) as engine:
        yield engine


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return db.create_sessionmaker(engine)
