"""`verimail-migrate`: bring the database schema to the latest revision."""

from __future__ import annotations

import argparse
from importlib.resources import files

import structlog
from alembic import command
from alembic.config import Config

from verimail_shared import cli
from verimail_shared.db import wait_for_database
from verimail_shared.logs import configure_logging
from verimail_shared.settings import Settings

log = structlog.get_logger(__name__)


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("verimail_shared") / "migrations"))
    # ConfigParser interpolates %; escape it so passwords with % survive.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    command.upgrade(alembic_config(settings.database_url), revision)


def migrate(args: argparse.Namespace) -> None:
    settings = cli.load_settings()
    configure_logging(settings)
    wait_for_database(settings.database_url, args.wait, create=args.create_database)
    try:
        upgrade(settings, args.revision)
    except Exception as exc:
        raise cli.CommandError(f"migration to {args.revision} failed: {exc}") from None
    log.info("migrated", revision=args.revision)


def main() -> None:
    parser = argparse.ArgumentParser(prog="verimail-migrate", description=__doc__)
    parser.add_argument("revision", nargs="?", default="head", help="target (default: head)")
    parser.add_argument(
        "--wait", type=float, default=30.0, help="seconds to wait for PostgreSQL to answer"
    )
    parser.add_argument(
        "--create-database",
        action="store_true",
        help="create DATABASE_URL's database first if it does not exist",
    )
    args = parser.parse_args()
    cli.run(parser.prog, lambda: migrate(args))
