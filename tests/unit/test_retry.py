"""Which failures are retried, and the backoff between tries."""

from __future__ import annotations

import pytest
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPConnectError,
    SMTPConnectResponseError,
    SMTPDataError,
    SMTPException,
    SMTPHeloError,
    SMTPNotSupported,
    SMTPReadTimeoutError,
    SMTPRecipientRefused,
    SMTPRecipientsRefused,
    SMTPResponseException,
    SMTPSenderRefused,
    SMTPServerDisconnected,
)
from pydantic import ValidationError

from verimail_shared.errors import PermanentError, TransientError
from verimail_shared.jobs import SendVerifyEmailPayload
from verimail_worker.retry import backoff_seconds, is_permanent


def invalid_payload() -> ValidationError:
    try:
        SendVerifyEmailPayload.model_validate({"username": ""})
    except ValidationError as exc:
        return exc
    raise AssertionError("the payload was valid")


@pytest.mark.parametrize(
    "error",
    [
        PermanentError("no"),
        invalid_payload(),
        SMTPRecipientsRefused([SMTPRecipientRefused(550, "no such user", "a@b.c")]),
        SMTPRecipientRefused(553, "mailbox name not allowed", "a@b.c"),
        SMTPDataError(554, "rejected as spam"),
    ],
    ids=["permanent", "invalid-payload", "rcpt-550", "rcpt-553-single", "data-554"],
)
def test_permanent_failures_are_not_retried(error: Exception) -> None:
    assert is_permanent(error)


@pytest.mark.parametrize(
    "error",
    [
        TransientError("user not committed yet"),
        SMTPRecipientsRefused([SMTPRecipientRefused(450, "mailbox busy", "a@b.c")]),
        SMTPRecipientsRefused([]),
        SMTPDataError(421, "try again later"),
        # 5xx that are about our configuration or the server, not this message
        SMTPAuthenticationError(535, "5.7.8 authentication credentials invalid"),
        SMTPSenderRefused(553, "sender address rejected", "no-reply@verimail.example"),
        SMTPSenderRefused(530, "5.7.0 Must issue a STARTTLS command first", "n@v.example"),
        SMTPResponseException(530, "5.7.0 Must issue a STARTTLS command first"),
        SMTPHeloError(501, "syntax error in HELO"),
        SMTPConnectResponseError(554, "no SMTP service here"),
        SMTPNotSupported("STARTTLS extension not supported by server"),
        SMTPException("TLS handshake failed"),
        SMTPConnectError("refused"),
        SMTPServerDisconnected("gone"),
        SMTPReadTimeoutError("timed out"),
        ConnectionRefusedError(),
        TimeoutError(),
        RuntimeError("something unexpected"),
    ],
    ids=[
        "transient",
        "rcpt-450",
        "rcpt-none",
        "data-421",
        "auth-535",
        "sender-553",
        "sender-530-starttls",
        "response-530-starttls",
        "helo-501",
        "connect-554",
        "tls-not-supported",
        "tls-failed",
        "connect",
        "disconnected",
        "read-timeout",
        "connection-refused",
        "timeout",
        "unexpected",
    ],
)
def test_transient_failures_are_retried(error: Exception) -> None:
    assert not is_permanent(error)


def test_backoff_doubles_per_try_between_half_and_full() -> None:
    for job_try, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (4, 16.0)]:
        assert backoff_seconds(job_try, 2, 300, rand=lambda: 0.0) == ceiling / 2
        assert backoff_seconds(job_try, 2, 300, rand=lambda: 1.0) == ceiling


def test_backoff_is_capped() -> None:
    assert backoff_seconds(30, 2, 300, rand=lambda: 1.0) == 300
    assert backoff_seconds(30, 2, 300, rand=lambda: 0.0) == 150


def test_backoff_is_jittered() -> None:
    delays = {backoff_seconds(5, 2, 300) for _ in range(50)}
    assert len(delays) > 40
    assert all(16 <= d <= 32 for d in delays)
