"""The tasks themselves: plain async functions of their dependencies and payload."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlmodel import col

from verimail_shared.codes import hash_code, new_code
from verimail_shared.db import transaction
from verimail_shared.errors import PermanentError, TransientError
from verimail_shared.jobs import SendVerifyEmailPayload
from verimail_shared.settings import Settings, SignupEnqueue
from verimail_shared.tables import User, VerifyEmail, loaded
from verimail_worker.mailer import Mailer, VerifyEmailLetter, render

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Deps:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    mailer: Mailer


@dataclass(frozen=True)
class Job:
    id: str
    try_: int


async def send_verify_email(deps: Deps, payload: SendVerifyEmailPayload, job: Job) -> None:
    """Email the user a link with a fresh single-use code, once per job however often it runs.

    The job's `verify_emails` row records that its email went out (`sent_at`). The row is
    marked in a transaction opened before the message is sent and committed the moment the
    SMTP server accepts it, so only a crash inside that one round trip can send twice; see
    docs/decisions/006.
    """
    letter = await _prepare(deps, payload, job)
    if letter is None:
        return
    async with deps.mailer.connect() as smtp, transaction(deps.sessions) as session:
        marked = await session.execute(
            update(VerifyEmail)
            .where(
                col(VerifyEmail.id) == letter.email_id,
                col(VerifyEmail.sent_at).is_(None),
                # A later run of this job may have replaced the code; then that run sends.
                col(VerifyEmail.secret_code_hash) == hash_code(letter.secret_code),
            )
            .values(sent_at=datetime.now(UTC))
        )
        if not getattr(marked, "rowcount", 0):
            log.info("verify_email_skipped", reason="another_run_sends")
            return
        await smtp.send_message(render(letter, deps.settings))
        # Leaving the block commits first, then says QUIT: nothing sits between 250 and COMMIT.
    log.info("verify_email_sent", email_id=letter.email_id)


async def _prepare(
    deps: Deps, payload: SendVerifyEmailPayload, job: Job
) -> VerifyEmailLetter | None:
    """Find or create this job's verify_emails row with a new code; None if nothing to send."""
    now = datetime.now(UTC)
    code = new_code()  # new on every try: an earlier try's email may never have gone out
    expires = now + timedelta(minutes=deps.settings.verify_email_ttl_minutes)
    async with transaction(deps.sessions) as session:
        user = await session.get(User, payload.username)
        if user is None:
            raise _missing_user(deps.settings, payload, job)
        # One row per job, whoever gets here first; then lock it, so that a second run of the
        # job waits here until the first has finished, and sees what it did.
        await session.execute(
            insert(VerifyEmail)
            .values(
                username=user.username,
                email=user.email,
                job_id=job.id,
                secret_code_hash=hash_code(code),
                expired_at=expires,
            )
            .on_conflict_do_nothing(index_elements=["job_id"])
        )
        row = await session.scalar(
            select(VerifyEmail).where(col(VerifyEmail.job_id) == job.id).with_for_update()
        )
        if row is None:
            raise TransientError(f"verification row of job {job.id} vanished")
        if row.sent_at is not None:
            log.info("verify_email_skipped", reason="already_sent", email_id=row.id)
            return None
        if user.is_email_verified:
            log.info("verify_email_skipped", reason="already_verified")
            return None
        row.secret_code_hash = hash_code(code)
        row.expired_at = expires
        await session.flush()
        return VerifyEmailLetter(
            to=user.email,
            full_name=user.full_name,
            email_id=loaded(row.id),
            secret_code=code,
            expires_at=expires,
            job_id=job.id,
        )


def _missing_user(settings: Settings, payload: SendVerifyEmailPayload, job: Job) -> Exception:
    if settings.signup_enqueue is SignupEnqueue.OUTBOX:
        # Outbox tasks are enqueued only after their user committed: the user is gone.
        return PermanentError(f"user {payload.username!r} does not exist")
    if job.try_ >= payload.max_tries:
        return PermanentError(
            f"user {payload.username!r} not found after {job.try_} tries: "
            "its signup transaction never committed"
        )
    # Enqueued inside the signup transaction: it may not have committed yet.
    return TransientError(f"user {payload.username!r} not found (yet)")
