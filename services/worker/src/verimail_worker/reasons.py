"""What a failed attempt's log line says: the service that failed, its host, and the reason.

A wrong password, a certificate that does not verify or an ACL denial reads as one line an
operator can act on, not as a bare exception name."""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPDataError,
    SMTPException,
    SMTPRecipientRefused,
    SMTPRecipientsRefused,
    SMTPResponseException,
)
from redis.exceptions import AuthenticationError, NoPermissionError, RedisError

from verimail_shared.db import DatabaseUnavailable
from verimail_shared.settings import Settings


def describe(exc: BaseException, settings: Settings) -> str:
    """`exc` as `Service at host:port: reason`, for the dependencies Verimail has; otherwise
    `Type: message`."""
    if isinstance(exc, SMTPRecipientsRefused | SMTPRecipientRefused | SMTPDataError):
        return f"{type(exc).__name__}: {exc}"  # about this message, not the server: code first
    if isinstance(exc, DatabaseUnavailable):
        return str(exc)  # names PostgreSQL's host already
    if isinstance(exc, RedisError):
        return f"Redis at {_redis_host(settings)}: {_redis_reason(exc)}"
    if isinstance(exc, SMTPException) or _tls_failure(exc) is not None:
        return f"SMTP at {settings.smtp_host}:{settings.smtp_port}: {_smtp_reason(exc, settings)}"
    return f"{type(exc).__name__}: {exc}"


def _redis_host(settings: Settings) -> str:
    parts = urlsplit(settings.redis_url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def _redis_reason(exc: RedisError) -> str:
    if isinstance(exc, NoPermissionError):
        return f"the ACL user may not do this: {exc}"
    if isinstance(exc, AuthenticationError):
        return f"refused the login in REDIS_URL: {exc}"
    if (verify := _tls_failure(exc)) is not None:
        return f"its certificate does not verify ({verify}): set REDIS_CA_FILE to its CA"
    return f"{type(exc).__name__}: {exc}"


def _smtp_reason(exc: BaseException, settings: Settings) -> str:
    if (verify := _tls_failure(exc)) is not None:
        return f"its certificate does not verify ({verify}): set SMTP_CA_FILE to its CA"
    if isinstance(exc, SMTPAuthenticationError):
        return f"refused the login of {settings.smtp_username!r}: {exc.code} {exc.message}"
    if isinstance(exc, SMTPResponseException):
        return f"{type(exc).__name__}: {exc.code} {exc.message}"
    return f"{type(exc).__name__}: {exc}"


def _tls_failure(exc: BaseException) -> str | None:
    """The verification message of a certificate failure in `exc`'s chain, if it is one."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return str(seen.verify_message or seen.reason)
        seen = seen.__cause__ or seen.__context__
    return None
