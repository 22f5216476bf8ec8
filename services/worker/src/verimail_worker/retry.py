"""Which task failures to retry, and how long to wait: the one place that decides."""

from __future__ import annotations

import random
from collections.abc import Callable

from aiosmtplib import SMTPDataError, SMTPRecipientRefused, SMTPRecipientsRefused
from pydantic import ValidationError

from verimail_shared.errors import PermanentError


def is_permanent(exc: BaseException) -> bool:
    """True when trying again cannot help: asynq's SkipRetry.

    Only a 5xx refusal of this message is permanent: of its recipient (RCPT) or of its content
    (DATA). Every other SMTP failure is about our side or the server's state (a wrong password,
    a refused sender, `530 Must issue STARTTLS`, HELO, TLS, the connection) and is retried, so a
    misconfiguration dead-letters nothing before its tries are used up. An invalid payload never
    becomes valid. Anything else (timeouts, a user row not committed yet) is worth another try.
    """
    if isinstance(exc, PermanentError | ValidationError):
        return True
    if isinstance(exc, SMTPRecipientsRefused):
        return bool(exc.recipients) and all(refused.code >= 500 for refused in exc.recipients)
    if isinstance(exc, SMTPRecipientRefused | SMTPDataError):
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
