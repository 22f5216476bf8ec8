"""The tasks themselves: plain async functions of their dependencies and payload."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

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
        if _finishing:  # attempts past their final dot: their markers must be written
            await asyncio.wait(set(_finishing), timeout=self.settings.worker_job_timeout_seconds)
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

    Once the message's final dot has gone, the server may have it: the attempt then runs to
    its end even if the job's deadline cancels it (a process paused past its deadline finds the
    answer waiting), so that the marker follows the server's answer (decision 090).
    """
    past_dot = asyncio.Event()
    attempt = asyncio.create_task(_send_verify_email(deps, payload, job, past_dot))
    try:
        await asyncio.shield(attempt)
    except asyncio.CancelledError:
        if past_dot.is_set() and not attempt.done():
            log.warning("verify_email_finishing_after_cancel")
            _finishing.add(attempt)
            attempt.add_done_callback(_finishing.discard)
        else:
            attempt.cancel()
        raise


# Attempts past their final dot that outlived a cancellation; Deps.close waits for them.
_finishing: set[asyncio.Task[None]] = set()


async def _send_verify_email(
    deps: Deps, payload: SendVerifyEmailPayload, job: Job, past_dot: asyncio.Event
) -> None:
    claim: _Claim | None = None
    accepted = False
    try:
        async with db.transaction(deps.sessions) as session:
            claim = await _claim(session, deps.settings, payload, job)
            if claim is None:
                return

            async def confirm() -> None:
                # PostgreSQL is asked once more just before the final dot: if it went away
                # during the conversation, the server keeps nothing, instead of a sent email
                # whose marker is lost.
                await session.scalar(select(1))
                past_dot.set()  # the dot is written next, with no await in between

            await deps.mailer.send(render(claim.letter, deps.settings), confirm=confirm)
            accepted = True
            # Leaving the block commits: nothing sits between the server's 250 and the COMMIT.
    except Exception:
        if not accepted or claim is None:
            raise
        # The server took the message but the COMMIT failed (PostgreSQL restarted, the
        # connection was cut): write the marker again, with this email's code, once it is back.
        await _mark_sent_again(deps, claim)
    log.info("verify_email_sent", email_id=claim.letter.email_id)


@dataclass(frozen=True)
class _Claim:
    letter: VerifyEmailLetter
    row: dict[str, object]  # the verify_emails values this attempt wrote


MARK_AGAIN_INTERVAL_SECONDS = 0.1


async def _mark_sent_again(deps: Deps, claim: _Claim) -> None:
    """Commit the marker of an email the server accepted, retrying until PostgreSQL answers
    (for at most the job timeout): a retry that runs first would send a second email."""
    deadline = time.monotonic() + deps.settings.worker_job_timeout_seconds
    while True:
        try:
            async with db.transaction(deps.sessions) as session:
                # Under the id in the email's link, which the rolled-back insert had taken.
                await session.execute(_upsert_sent({**claim.row, "id": claim.letter.email_id}))
        except Exception as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("verify_email_mark_retried", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(MARK_AGAIN_INTERVAL_SECONDS)
            continue
        log.warning("verify_email_marked_after_failed_commit", email_id=claim.letter.email_id)
        return


def _upsert_sent(row: dict[str, object]) -> Any:
    """Write the job's row as sent, unless a run before has: it then updates nothing.

    The upsert locks the row until the transaction ends: a second run of the job waits there,
    then finds the row sent (nothing updated, nothing returned), or rolled back and free.
    """
    fields = {key: row[key] for key in ("secret_code_hash", "expired_at", "sent_at")}
    return (
        insert(VerifyEmail)
        .values(**row)
        .on_conflict_do_update(
            index_elements=["job_id"], set_=fields, where=col(VerifyEmail.sent_at).is_(None)
        )
        .returning(col(VerifyEmail.id))
    )


async def _claim(
    session: AsyncSession, settings: Settings, payload: SendVerifyEmailPayload, job: Job
) -> _Claim | None:
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
    row: dict[str, object] = {
        "username": user.username,
        "email": user.email,
        "job_id": job.id,
        "secret_code_hash": hash_code(code),
        "expired_at": expires,
        "sent_at": now,
    }
    email_id = await session.scalar(_upsert_sent(row))
    if email_id is None:
        log.info("verify_email_skipped", reason="already_sent")
        return None
    letter = VerifyEmailLetter(
        to=user.email,
        full_name=user.full_name,
        email_id=email_id,
        secret_code=code,
        expires_at=expires,
        job_id=job.id,
    )
    return _Claim(letter, row)


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
