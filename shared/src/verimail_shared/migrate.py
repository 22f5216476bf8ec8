"""`verimail-migrate`: bring the database schema to the latest revision."""

from __future__ import annotations

import argparse
import asyncio
import time
from importlib.resources import files

import asyncpg
import structlog
from alembic import command
from alembic.config import Config

from verimail_shared.db import plain_url
from verimail_shared.logs import configure_logging
from verimail_shared.settings import Settings, get_settings

log = structlog.get_logger(__name__)


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("verimail_shared") / "migrations"))
    # ConfigParser interpolates %; escape it so passwords with % survive.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def wait_for_database(settings: Settings, timeout: float) -> None:
    """Compose and Kubernetes start us beside PostgreSQL; wait for it rather than crash."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            asyncio.run(_ping(plain_url(settings.database_url)))
            return
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise
            log.info("database_not_ready", error=str(exc))
            time.sleep(1)


async def _ping(url: str) -> None:
    connection = await asyncpg.connect(url, timeout=5)
    await connection.close()


def upgrade(settings: Settings, revision: str = "head") -> None:
    command.upgrade(alembic_config(settings.database_url), revision)


def main() -> None:
    parser = argparse.ArgumentParser(prog="verimail-migrate", description=__doc__)
    parser.add_argument("revision", nargs="?", default="head", help="target (default: head)")
    parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for PostgreSQL")
    args = parser.parse_args()
    settings = get_settings()
    configure_logging(settings)
    wait_for_database(settings, args.wait)
    upgrade(settings, args.revision)
    log.info("migrated", revision=args.revision)
