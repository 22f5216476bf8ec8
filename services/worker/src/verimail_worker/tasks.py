"""The tasks themselves: plain async functions of their dependencies and payload."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import DateTime, String, bindparam, false, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlmodel import col

from verimail_shared import db
from verimail_shared.codes import hash_code, job_code, new_key
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
    code_key: bytes
    # The same pool, each statement its own transaction (no BEGIN or COMMIT to wait for).
    autocommit: AsyncEngine

    @classmethod
    def open(cls, settings: Settings) -> Deps:
        """The database engine and the SMTP pool; both connect on first use."""
        # No ping per checkout (a third of a task's round trips): after a PostgreSQL restart
        # the first use of each dead connection fails, and that attempt is retried.
        engine = db.create_engine(settings, pre_ping=False)
        return cls(
            settings,
            engine,
            db.create_sessionmaker(engine),
            SmtpPool(settings),
            _code_key(settings),
            engine.execution_options(isolation_level="AUTOCOMMIT"),
        )

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

    The job's `verify_emails` row, with its code's hash, is committed first; the code is
    derived from the job id, the same on every run (decision 091). Then one transaction writes
    the sent marker (`sent_at`), which locks the row, sends the message, and commits the moment
    the SMTP server accepts it. A second run of the job waits on the lock and then finds the
    row sent; a failed send rolls the marker back for the retry. Only a failure between the
    server's 250 and the COMMIT taking effect sends again, and then the very same email, whose
    link works (decisions 006 and 091).

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


def _code_key(settings: Settings) -> bytes:
    if settings.verify_code_key is not None:
        return settings.verify_code_key.get_secret_value().encode()
    # Each process then derives its own codes: a job run again by another worker sends a new
    # link, and the first email's link stops working if its marker was lost (decision 091).
    log.warning("verify_code_key_unset", fix="set VERIFY_CODE_KEY, the same on every worker")
    return new_key()


# Attempts past their final dot that outlived a cancellation; Deps.close waits for them.
_finishing: set[asyncio.Task[None]] = set()


async def _send_verify_email(
    deps: Deps, payload: SendVerifyEmailPayload, job: Job, past_dot: asyncio.Event
) -> None:
    letter = await _prepare(deps, payload, job)
    if letter is None:
        return
    marker = _marker(letter)
    accepted = False
    try:
        async with db.transaction(deps.sessions) as session:
            if await session.scalar(MARK_SENT, marker) is None:
                log.info("verify_email_skipped", reason="already_sent")
                return

            async def confirm() -> None:
                # PostgreSQL is asked once more just before the final dot: if it went away
                # during the conversation, the server keeps nothing, instead of a sent email
                # whose marker is lost.
                await session.scalar(select(1))
                past_dot.set()  # the dot is written next, with no await in between

            await deps.mailer.send(render(letter, deps.settings), confirm=confirm)
            accepted = True
            # Leaving the block commits: nothing sits between the server's 250 and the COMMIT.
    except Exception:
        if not accepted:
            raise
        # The server took the message but the COMMIT failed (PostgreSQL restarted, the
        # connection was cut): write the marker again once it is back.
        await _mark_sent_again(deps, marker)
    log.info("verify_email_sent", email_id=letter.email_id)


_USERS = User.__table__.c  # type: ignore[attr-defined]
_EMAILS = VerifyEmail.__table__.c  # type: ignore[attr-defined]
_the_user = (
    select(_USERS.username, _USERS.email, _USERS.full_name, _USERS.is_email_verified)
    .where(_USERS.username == bindparam("username"))
    .cte("the_user")
)
_the_row = (
    insert(VerifyEmail)
    .from_select(
        ["username", "email", "job_id", "secret_code_hash", "expired_at", "is_used"],
        select(
            _the_user.c.username,
            _the_user.c.email,
            bindparam("job_id", type_=String),
            bindparam("code_hash", type_=String),
            bindparam("expires", type_=DateTime(timezone=True)),
            false(),  # Python-side defaults do not reach an INSERT inside a CTE
        ).where(_the_user.c.is_email_verified.is_(False)),
    )
    .on_conflict_do_nothing(index_elements=["job_id"])
    .returning(_EMAILS.id)
    .cte("the_row")
)
# One statement, committed on its own before anything is sent: it reads the user and writes the
# job's row with its code's hash, unless an earlier run has. The row and its code then outlive
# any attempt's transaction, so the link of an email whose marker was lost still works, and a
# re-run sends that very link again (decision 091).
PREPARE = select(
    _the_user.c.email,
    _the_user.c.full_name,
    _the_user.c.is_email_verified,
    select(_the_row.c.id).scalar_subquery().label("new_id"),
)
# The sent marker. It locks the row until the attempt ends: a second run of the job waits
# there, then finds the row sent (nothing updated, nothing returned), or rolled back and free.
MARK_SENT = (
    update(VerifyEmail)
    .where(col(VerifyEmail.job_id) == bindparam("job"), col(VerifyEmail.sent_at).is_(None))
    .values(
        secret_code_hash=bindparam("code_hash"),
        expired_at=bindparam("expires"),
        sent_at=bindparam("sent"),
    )
    .returning(col(VerifyEmail.id))
)


async def _prepare(
    deps: Deps, payload: SendVerifyEmailPayload, job: Job
) -> VerifyEmailLetter | None:
    """The letter this run sends, after its row is committed; None if nothing is to be sent."""
    code = job_code(deps.code_key, job.id)
    expires = datetime.now(UTC) + timedelta(minutes=deps.settings.verify_email_ttl_minutes)
    params = {
        "username": payload.username,
        "job_id": job.id,
        "code_hash": hash_code(code),
        "expires": expires,
    }
    async with deps.autocommit.connect() as connection:
        user = (await connection.execute(PREPARE, params)).one_or_none()
        if user is None:
            raise _missing_user(deps.settings, payload, job)
        if user.is_email_verified:
            log.info("verify_email_skipped", reason="already_verified")
            return None
        email_id: int = (
            user.new_id  # None when an earlier run wrote the row: its id is in that link
            or (
                await connection.execute(select(_EMAILS.id).where(_EMAILS.job_id == job.id))
            ).scalar_one()
        )
    return VerifyEmailLetter(
        to=user.email,
        full_name=user.full_name,
        email_id=email_id,
        secret_code=code,
        expires_at=expires,
        job_id=job.id,
    )


def _marker(letter: VerifyEmailLetter) -> dict[str, object]:
    return {
        "job": letter.job_id,
        "code_hash": hash_code(letter.secret_code),
        "expires": letter.expires_at,
        "sent": datetime.now(UTC),
    }


MARK_AGAIN_INTERVAL_SECONDS = 0.1


async def _mark_sent_again(deps: Deps, marker: dict[str, object]) -> None:
    """Commit the marker of an email the server accepted, retrying until PostgreSQL answers
    (for at most the job timeout): a retry that runs first would send it again."""
    deadline = time.monotonic() + deps.settings.worker_job_timeout_seconds
    while True:
        try:
            async with db.transaction(deps.sessions) as session:
                await session.execute(MARK_SENT, marker)
        except Exception as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("verify_email_mark_retried", error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(MARK_AGAIN_INTERVAL_SECONDS)
            continue
        log.warning("verify_email_marked_after_failed_commit", job_id=marker["job"])
        return


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
