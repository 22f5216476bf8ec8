"""The database tables (SQLModel). Alembic migrations in `migrations/` create them."""

from __future__ import annotations

from datetime import datetime
from typing import TypeVar

from sqlalchemy import BigInteger, Column, DateTime, ForeignKey, Identity, String, text
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

    id: int | None = Field(
        default=None, sa_column=Column(BigInteger, Identity(always=False), primary_key=True)
    )
    username: str = Field(
        sa_column=Column(
            String(100),
            ForeignKey("users.username", ondelete="CASCADE"),
            nullable=False,
            index=True,
        )
    )
    email: str = Field(sa_column=Column(String(200), nullable=False))
    secret_code: str = Field(nullable=False)
    is_used: bool = Field(
        default=False, nullable=False, sa_column_kwargs={"server_default": text("false")}
    )
    created_at: datetime | None = Field(default=None, sa_column=_timestamp(NOW))
    expired_at: datetime | None = Field(
        default=None, sa_column=_timestamp(text("now() + interval '15 minutes'"))
    )
