"""The service layer: sign a user up, verify an email. Knows nothing of HTTP."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Protocol

import structlog
from asyncpg.exceptions import UniqueViolationError
from sqlalchemy import DateTime, String, bindparam, insert, select, true, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlmodel import col

from verimail_api.passwords import Passwords
from verimail_api.schemas import CreateUserRequest
from verimail_shared import outbox
from verimail_shared.codes import code_matches
from verimail_shared.db import transaction
from verimail_shared.errors import AlreadyExists, FailedPrecondition, NotFound
from verimail_shared.jobs import SendVerifyEmailPayload, TaskName
from verimail_shared.marks import DispatchedMarks
from verimail_shared.settings import SignupEnqueue
from verimail_shared.tables import OutboxTask, User, VerifyEmail, loaded

log = structlog.get_logger(__name__)


class TaskQueue(Protocol):
    async def enqueue(self, job: OutboxTask) -> None:
        """Put `job` on its queue; enqueueing the same job id twice adds nothing."""


USERS = User.__table__.c  # type: ignore[attr-defined]
NEW_USER = insert(User).values(
    username=bindparam("username"),
    hashed_password=bindparam("hashed_password"),
    full_name=bindparam("full_name"),
    email=bindparam("email"),
    is_email_verified=False,  # a Python-side default, which an INSERT inside a CTE does not get
)
# One statement, hence one round trip and one implicit transaction: the user and the outbox row
# that sends its email are written together or not at all (a duplicate username or email fails
# the whole statement). The row's id comes back for the batched dispatch mark.
_user = NEW_USER.returning(*USERS).cte("new_user")
_task = (
    insert(OutboxTask)
    .from_select(
        ["job_id", "task", "payload", "due_at"],
        select(
            bindparam("job_id", type_=String),
            bindparam("task", type_=String),
            bindparam("payload", type_=JSONB),
            bindparam("due_at", type_=DateTime(timezone=True)),
        ).select_from(_user),
    )
    .returning(OutboxTask.__table__.c.id)  # type: ignore[attr-defined]
    .cte("new_task")
)
USER_WITH_TASK = select(_user, _task.c.id.label("outbox_id")).select_from(
    _user.join(_task, true())  # one row each
)


class CodeAlreadyUsed(FailedPrecondition):
    """The verification code was used before."""


class CodeExpired(FailedPrecondition):
    """The verification code is past its expiry; `email` is where a new one would go."""

    def __init__(self, message: str, email: str = "") -> None:
        super().__init__(message)
        self.email = email


@dataclass(frozen=True)
class Signup:
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    passwords: Passwords
    queue: TaskQueue
    marks: DispatchedMarks
    max_tries: int
    defer_seconds: float
    mode: SignupEnqueue = SignupEnqueue.OUTBOX

    @cached_property
    def _autocommit(self) -> AsyncEngine:
        """The engine without BEGIN and COMMIT: for statements that are a transaction alone."""
        return self.engine.execution_options(isolation_level="AUTOCOMMIT")

    async def create_user(self, request: CreateUserRequest, request_id: str | None) -> Row[Any]:
        """Store the user and, in the same transaction, the task that sends its email; return
        the user's row as stored (every column of `users`)."""
        hashed = await self.passwords.hash(request.password)
        values = {
            "username": request.username,
            "hashed_password": hashed,
            "full_name": request.full_name,
            "email": request.email,
        }
        payload = SendVerifyEmailPayload(
            username=request.username, max_tries=self.max_tries, request_id=request_id
        )
        job = outbox.new_task(TaskName.SEND_VERIFY_EMAIL, payload, self.defer_seconds)
        try:
            if self.mode is SignupEnqueue.IN_TRANSACTION:
                row = await self._insert_then_enqueue(values, job)
            else:
                row = await self._insert_with_task(values, job)
                job.id = row.outbox_id
        except IntegrityError as exc:
            raise AlreadyExists(_duplicate_message(exc)) from None
        # On the request's access line, its one line at INFO (decision 053).
        structlog.contextvars.bind_contextvars(username=request.username, job_id=job.job_id)
        if self.mode is SignupEnqueue.OUTBOX:
            await self._dispatch(job)
        return row

    async def _insert_with_task(self, values: dict[str, Any], job: OutboxTask) -> Row[Any]:
        """The user and its outbox row, in one statement: one round trip to PostgreSQL."""
        task = {
            "job_id": job.job_id,
            "task": job.task,
            "payload": job.payload,
            "due_at": job.due_at,
        }
        async with self._autocommit.connect() as connection:
            result = await connection.execute(USER_WITH_TASK, values | task)
            return result.one()

    async def _insert_then_enqueue(self, values: dict[str, Any], job: OutboxTask) -> Row[Any]:
        """simplebank's way: if the enqueue fails the user is rolled back (503), but if the commit
        fails after it, the task is a phantom. Kept to compare against."""
        async with self.engine.begin() as connection:
            row = (await connection.execute(NEW_USER.returning(*USERS), values)).one()
            await self.queue.enqueue(job)
        return row

    async def resend_verify_email(self, email: str, request_id: str | None) -> OutboxTask | None:
        """Write a new verification task if `email` belongs to an unverified user.

        Returns the task to dispatch, which the caller does after answering, so that whether the
        address exists shows neither in the answer nor in its timing.
        """
        async with transaction(self.sessions) as session:
            user = await session.scalar(select(User).where(col(User.email) == email))
            if user is None or user.is_email_verified:
                return None
            payload = SendVerifyEmailPayload(
                username=user.username, max_tries=self.max_tries, request_id=request_id
            )
            job = outbox.new_task(TaskName.SEND_VERIFY_EMAIL, payload, defer_seconds=0)
            session.add(job)
        log.info("verify_email_resend", username=user.username, job_id=job.job_id)
        return job

    async def dispatch(self, job: OutboxTask | None) -> None:
        if job is not None:
            await self._dispatch(job)

    async def _dispatch(self, job: OutboxTask) -> None:
        """Enqueue a committed outbox row now; on any failure the relay does it shortly."""
        try:
            await self.queue.enqueue(job)
        except Exception as exc:  # the user is committed: nothing here may fail the signup
            log.warning(
                "outbox_dispatch_deferred",
                job_id=job.job_id,
                error=f"{type(exc).__name__}: {exc}",
            )
            return
        self.marks.add(loaded(job.id))

    async def look_up_code(self, email_id: int, secret_code: str) -> str:
        """The address a verification code was sent to, if using it now would verify it; raises
        as `verify_email` would, but changes nothing: what a page may show before the click."""
        async with self.sessions() as session:
            row = await session.get(VerifyEmail, email_id)
            return _usable(row, secret_code, datetime.now(UTC)).email

    async def verify_email(self, email_id: int, secret_code: str) -> None:
        """Use a verification code once: mark it used and the user verified, together."""
        now = datetime.now(UTC)
        async with transaction(self.sessions) as session:
            row = _usable(
                await session.get(VerifyEmail, email_id, with_for_update=True), secret_code, now
            )
            row.is_used = True
            await session.execute(
                update(User)
                .where(col(User.username) == row.username)
                .values(is_email_verified=True)
            )
        log.info("email_verified", username=row.username, email_id=email_id)


def _usable(row: VerifyEmail | None, secret_code: str, now: datetime) -> VerifyEmail:
    """`row` if `secret_code` is its code and may be used at `now`; else why not, raised."""
    if row is None or not code_matches(row.secret_code_hash, secret_code):
        raise NotFound("verification not found")
    if row.is_used:
        raise CodeAlreadyUsed("verification code already used")
    if loaded(row.expired_at) <= now:
        raise CodeExpired("verification code expired", row.email)
    return row


def _duplicate_message(exc: IntegrityError) -> str:
    cause = exc.orig.__cause__ if exc.orig is not None else None
    if isinstance(cause, UniqueViolationError) and cause.constraint_name == "users_email_key":
        return "email already exists"
    return "username already exists"
