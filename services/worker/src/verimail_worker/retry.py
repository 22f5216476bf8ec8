"""Which task failures to retry, and how long to wait: the one place that decides."""

from __future__ import annotations

import random
from collections.abc import Callable

from aiosmtplib import SMTPRecipientsRefused, SMTPResponseException
from pydantic import ValidationError

from verimail_shared.errors import PermanentError, TransientError


def is_permanent(exc: BaseException) -> bool:
    """True when trying again cannot help: asynq's SkipRetry.

    SMTP says so itself: 5xx replies are permanent, 4xx transient. An invalid payload never
    becomes valid. Anything else (connection errors, timeouts, a user row not committed yet)
    is worth another try.
    """
    if isinstance(exc, PermanentError | ValidationError):
        return True
    if isinstance(exc, TransientError):
        return False
    if isinstance(exc, SMTPRecipientsRefused):
        return any(refusal.code >= 500 for refusal in exc.recipients)
    if isinstance(exc, SMTPResponseException):
        return exc.code >= 500
    return False


def backoff_seconds(
    job_try: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Exponential backoff with jitter: base·2^(try-1), capped, then scaled into [½, 1]·that.

    Keeping half of the delay fixed stops retries of a failing dependency from clumping
    while still guaranteeing each one waits.
    """
    ceiling = min(cap, base * 2.0 ** max(job_try - 1, 0))
    return ceiling / 2 + rand() * ceiling / 2
