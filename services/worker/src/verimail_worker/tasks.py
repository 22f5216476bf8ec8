"""The tasks themselves: plain async functions of their dependencies and payload."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlmodel import col

from verimail_shared import db
from verimail_shared.codes import hash_code, new_code
from verimail_shared.errors import PermanentError, TransientError
from verimail_shared.jobs import SendVerifyEmailPayload
from verimail_shared.settings import Settings, SignupEnqueue
from verimail_shared.tables import User, VerifyEmail
from verimail_worker.letter import VerifyEmailLetter, render
from verimail_worker.smtp_pool import SmtpPool

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Deps:
    settings: Settings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    mailer: SmtpPool

    @classmethod
    def open(cls, settings: Settings) -> Deps:
        """The database engine and the SMTP pool; both connect on first use."""
        # No ping per checkout (a third of a task's round trips): after a PostgreSQL restart
        # the first use of each dead connection fails, and that attempt is retried.
        engine = db.create_engine(settings, pre_ping=False)
        return cls(settings, engine, db.create_sessionmaker(engine), SmtpPool(settings))

    async def close(self) -> None:
        await self.mailer.close()
        await self.engine.dispose()


@dataclass(frozen=True)
class Job:
    id: str
    try_: int


async def send_verify_email(deps: Deps, payload: SendVerifyEmailPayload, job: Job) -> None:
    """Email the user a link with a fresh single-use code, once per job however often it runs.

    One transaction does it all: it writes the job's `verify_emails` row with a new code and
    its sent marker (`sent_at`), which locks the row, sends the message, and commits the moment
    the SMTP server accepts it. A second run of the job waits on the lock and then finds the
    row sent; a failed send rolls the marker back for the retry. Only a failure between the
    server's 250 and the COMMIT taking effect can send twice; see docs/decisions/006.
    """
    async with db.transaction(deps.sessions) as session:
        letter = await _claim(session, deps.settings, payload, job)
        if letter is None:
            return
        # PostgreSQL is asked once more just before the final dot: if it went away during the
        # conversation, the server keeps nothing, instead of a sent email whose marker is lost.
        await deps.mailer.send(
            render(letter, deps.settings), confirm=lambda: session.scalar(select(1))
        )
        # Leaving the block commits: nothing sits between the server's 250 and the COMMIT.
    log.info("verify_email_sent", email_id=letter.email_id)


async def _claim(
    session: AsyncSession, settings: Settings, payload: SendVerifyEmailPayload, job: Job
) -> VerifyEmailLetter | None:
    """Mark this job's verify_emails row sent, with a new code; None if nothing is to be sent."""
    user = await session.get(User, payload.username)
    if user is None:
        raise _missing_user(settings, payload, job)
    if user.is_email_verified:
        log.info("verify_email_skipped", reason="already_verified")
        return None
    now = datetime.now(UTC)
    code = new_code()  # new on every try: an earlier try's email may never have gone out
    expires = now + timedelta(minutes=settings.verify_email_ttl_minutes)
    fields = {"secret_code_hash": hash_code(code), "expired_at": expires, "sent_at": now}
    # One row per job, whoever gets here first, locked until this transaction ends: a second
    # run of the job waits here, then finds the row sent (nothing updated, nothing returned),
    # or rolled back and free to claim.
    email_id = await session.scalar(
        insert(VerifyEmail)
        .values(username=user.username, email=user.email, job_id=job.id, **fields)
        .on_conflict_do_update(
            index_elements=["job_id"], set_=fields, where=col(VerifyEmail.sent_at).is_(None)
        )
        .returning(col(VerifyEmail.id))
    )
    if email_id is None:
        log.info("verify_email_skipped", reason="already_sent")
        return None
    return VerifyEmailLetter(
        to=user.email,
        full_name=user.full_name,
        email_id=email_id,
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
