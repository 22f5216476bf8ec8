"""The error types every layer raises; the API maps them to HTTP, the worker to retry or not."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class VerimailError(Exception):
    """Base of the errors Verimail raises on purpose."""


class InvalidArgument(VerimailError):
    """The caller sent something invalid; `violations` names every bad field."""

    def __init__(self, violations: list[FieldViolation]) -> None:
        super().__init__("invalid arguments: " + ", ".join(v.field for v in violations))
        self.violations = violations


class NotFound(VerimailError):
    """The thing asked for does not exist."""


class AlreadyExists(VerimailError):
    """The thing to create exists already."""


class Unauthenticated(VerimailError):
    """The caller did not prove who it is."""


class FailedPrecondition(VerimailError):
    """The thing exists but is in the wrong state (a used or expired code)."""


class Unavailable(VerimailError):
    """A dependency (PostgreSQL, Redis, SMTP) did not answer; the same call may work later."""


class TransientError(VerimailError):
    """A task failed in a way that retrying may fix."""


class PermanentError(VerimailError):
    """A task failed in a way that retrying will not fix (asynq's SkipRetry)."""
