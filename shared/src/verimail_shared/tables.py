"""The database tables (SQLModel). Alembic migrations in `migrations/` create them."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

# simplebank's zero value for "password never changed"; clients compare against it.
NEVER = text("'0001-01-01 00:00:00Z'")
NOW = text("now()")

T = TypeVar("T")


def loaded(value: T | None) -> T:
    """A column the database fills in (identity, server default), read after a flush."""
    if value is None:
        raise RuntimeError("column read before the database filled it in")
    return value


def _timestamp(default: object) -> Column[datetime]:
    return Column(DateTime(timezone=True), nullable=False, server_default=default)  # type: ignore[arg-type]


def _optional_timestamp() -> Column[datetime]:
    return Column(DateTime(timezone=True), nullable=True)


def _identity() -> Column[int]:
    return Column(BigInteger, Identity(always=False), primary_key=True)


class User(SQLModel, table=True):
    __tablename__ = "users"

    username: str = Field(sa_column=Column(String(100), primary_key=True))
    hashed_password: str = Field(nullable=False)
    full_name: str = Field(sa_column=Column(String(100), nullable=False))
    email: str = Field(sa_column=Column(String(200), nullable=False, unique=True))
    is_email_verified: bool = Field(
        default=False, nullable=False, sa_column_kwargs={"server_default": text("false")}
    )
    password_changed_at: datetime | None = Field(default=None, sa_column=_timestamp(NEVER))
    created_at: datetime | None = Field(default=None, sa_column=_timestamp(NOW))


class VerifyEmail(SQLModel, table=True):
    __tablename__ = "verify_emails"

    id: int | None = Field(default=None, sa_column=_identity())
    username: str = Field(
        sa_column=Column(
            String(100),
            ForeignKey("users.username", ondelete="CASCADE"),
            nullable=False,
            index=True,
        )
    )
    email: str = Field(sa_column=Column(String(200), nullable=False))
    secret_code_hash: str = Field(nullable=False)  # SHA-256 of the code; the code is never stored
    is_used: bool = Field(
        default=False, nullable=False, sa_column_kwargs={"server_default": text("false")}
    )
    created_at: datetime | None = Field(default=None, sa_column=_timestamp(NOW))
    expired_at: datetime | None = Field(
        default=None, sa_column=_timestamp(text("now() + interval '15 minutes'"))
    )
    # The job that created the row: one row, hence one email, per job (see decision 006).
    job_id: str | None = Field(default=None, sa_column=Column(String(64), unique=True))
    sent_at: datetime | None = Field(default=None, sa_column=_optional_timestamp())


class OutboxTask(SQLModel, table=True):
    """A task written in the same transaction as the change that calls for it."""

    __tablename__ = "outbox"

    id: int | None = Field(default=None, sa_column=_identity())
    job_id: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    task: str = Field(sa_column=Column(String(100), nullable=False))
    payload: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    due_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    created_at: datetime | None = Field(default=None, sa_column=_timestamp(NOW))
    dispatched_at: datetime | None = Field(default=None, sa_column=_optional_timestamp())
    completed_at: datetime | None = Field(default=None, sa_column=_optional_timestamp())


# Columns alike in shape across tables are declarations, one per column, as the migrations make
# them; a shared mixin would hide a table's columns from the one place that lists them.
class DeadTask(SQLModel, table=True):
    """A task that failed for good, kept to be looked at and re-queued."""

    __tablename__ = "dead_tasks"

    id: int | None = Field(default=None, sa_column=_identity())
    job_id: str = Field(sa_column=Column(String(64), nullable=False, index=True))
    task: str = Field(sa_column=Column(String(100), nullable=False))
    queue: str = Field(sa_column=Column(String(100), nullable=False))
    payload: dict[str, Any] = Field(sa_column=Column(JSONB, nullable=False))
    tries: int = Field(sa_column=Column(Integer, nullable=False))
    last_error: str = Field(sa_column=Column(Text, nullable=False))
    failed_at: datetime | None = Field(default=None, sa_column=_timestamp(NOW))
    requeued_at: datetime | None = Field(default=None, sa_column=_optional_timestamp())
