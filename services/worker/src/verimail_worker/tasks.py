"""The tasks themselves: plain async functions of their dependencies and payload."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from verimail_shared.db import transaction
from verimail_shared.errors import TransientError
from verimail_shared.jobs import SendVerifyEmailPayload
from verimail_shared.settings import Settings
from verimail_shared.tables import User, VerifyEmail, loaded
from verimail_worker.mailer import Mailer, VerifyEmailLetter, render

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Deps:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    mailer: Mailer


def new_secret_code() -> str:
    """256 random bits, URL-safe: 43 characters."""
    return secrets.token_urlsafe(32)


async def send_verify_email(deps: Deps, payload: SendVerifyEmailPayload, job_id: str) -> None:
    """Create a single-use code for the user and email them the link that uses it."""
    now = datetime.now(UTC)
    async with transaction(deps.sessions) as session:
        user = await session.get(User, payload.username)
        if user is None:
            # The signup that enqueued us may not have committed yet.
            raise TransientError(f"user {payload.username!r} not found")
        if user.is_email_verified:
            log.info("verify_email_skipped", reason="already_verified")
            return
        row = VerifyEmail(
            username=user.username,
            email=user.email,
            secret_code=new_secret_code(),
            expired_at=now + timedelta(minutes=deps.settings.verify_email_ttl_minutes),
        )
        session.add(row)
        await session.flush()
    letter = VerifyEmailLetter(
        to=user.email,
        full_name=user.full_name,
        email_id=loaded(row.id),
        secret_code=row.secret_code,
        expires_at=loaded(row.expired_at),
        job_id=job_id,
    )
    await deps.mailer.send(render(letter, deps.settings))
    log.info("verify_email_sent", email_id=row.id)
