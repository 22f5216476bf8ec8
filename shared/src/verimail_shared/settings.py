"""All configuration, read once from the environment (and `.env`)."""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, FilePath, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class LogFormat(StrEnum):
    JSON = "json"
    CONSOLE = "console"


class SmtpTls(StrEnum):
    NONE = "none"
    STARTTLS = "starttls"
    TLS = "tls"


class SignupEnqueue(StrEnum):
    """How signup hands its task to the queue (decision 005)."""

    OUTBOX = "outbox"  # commit user + outbox row, then enqueue; a relay covers failures
    IN_TRANSACTION = "in_transaction"  # simplebank's design, kept for comparison only


MIN_SECRET_LENGTH = 16


class Settings(BaseSettings):
    """Every setting of every Verimail process; each field is one environment variable."""

    # An empty variable (`ADMIN_TOKEN=`, as .env.example offers it) is an unset one; errors
    # never quote the value, which may be a secret.
    model_config = SettingsConfigDict(
        env_file=".env",
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,
    )

    # Dependencies
    database_url: str = "postgresql://postgres@127.0.0.1:5432/verimail"
    database_pool_size: int = Field(default=10, ge=1)
    redis_url: str = "redis://127.0.0.1:6379/0"
    # A private CA for rediss://, trusted beside the system's CAs.
    redis_ca_file: FilePath | None = None
    # With sentinels set, the master's address comes from them; REDIS_URL still gives the
    # database number and the password.
    redis_sentinels: Annotated[list[tuple[str, int]], NoDecode] = Field(default_factory=list)
    redis_sentinel_master: str = "mymaster"
    dependency_timeout_seconds: float = Field(default=5.0, gt=0)

    # Logging
    log_format: LogFormat = LogFormat.JSON
    log_level: str = "INFO"

    # API
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    public_base_url: str = "http://127.0.0.1:8000"
    argon2_time_cost: int = Field(default=2, ge=2)
    argon2_memory_kib: int = Field(default=19456, ge=19456)
    argon2_parallelism: int = Field(default=1, ge=1)
    max_body_bytes: int = Field(default=16384, ge=1024)
    admin_token: SecretStr | None = None
    admin_port: int | None = None  # serve the console and /v1/admin/* on their own port
    admin_host: str = "127.0.0.1"
    admin_session_idle_minutes: int = Field(default=30, ge=1)
    rate_limit_admin_login: str = "5/minute"
    api_metrics_port: int | None = None  # serve /metrics on its own port instead of API_PORT
    api_metrics_host: str = "127.0.0.1"
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    rate_limit_create_user: str = "20/minute"
    rate_limit_verify_email: str = "60/minute"
    rate_limit_resend_ip: str = "10/minute"
    rate_limit_resend_email: str = "3/hour"

    # The verification task
    verify_email_defer_seconds: float = Field(default=10.0, ge=0)
    verify_email_max_tries: int = Field(default=10, ge=1)
    verify_email_ttl_minutes: int = Field(default=15, ge=1)
    # The workers derive each job's code from it, so a re-run sends the same link (decision 091).
    verify_code_key: SecretStr | None = None
    retry_backoff_base_seconds: float = Field(default=2.0, gt=0)
    retry_backoff_max_seconds: float = Field(default=300.0, gt=0)
    signup_enqueue: SignupEnqueue = SignupEnqueue.OUTBOX

    # Fields alike in shape are declarations, one per environment variable: nothing to share.
    # The outbox relay (runs in every worker)
    outbox_relay_interval_seconds: float = Field(default=1.0, gt=0)
    outbox_relay_after_seconds: float = Field(default=5.0, ge=0)
    outbox_reconcile_after_seconds: float = Field(default=60.0, gt=0)
    outbox_retention_hours: float = Field(default=168.0, gt=0)

    # Email
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_tls: SmtpTls = SmtpTls.NONE
    smtp_ca_file: FilePath | None = None  # a private CA, trusted beside the system's CAs
    smtp_timeout_seconds: float = Field(default=10.0, gt=0)
    email_sender: str = "Verimail <no-reply@verimail.example>"

    # Worker
    worker_queues: Annotated[dict[str, int], NoDecode] = Field(
        default_factory=lambda: {"critical": 10, "default": 5}
    )
    worker_max_jobs: int = Field(default=10, ge=1)
    worker_poll_delay_seconds: float = Field(default=5.0, gt=0)
    worker_job_timeout_seconds: float = Field(default=30.0, gt=0)
    worker_shutdown_grace_seconds: int = Field(default=20, ge=0)
    worker_health_check_interval_seconds: int = Field(default=10, ge=1)
    worker_metrics_host: str = "127.0.0.1"
    worker_metrics_port: int = 9100

    @field_validator("admin_token")
    @classmethod
    def _check_admin_token(cls, value: SecretStr | None) -> SecretStr | None:
        return _long_enough("ADMIN_TOKEN", value, "or unset to turn the admin routes off")

    @field_validator("verify_code_key")
    @classmethod
    def _check_verify_code_key(cls, value: SecretStr | None) -> SecretStr | None:
        return _long_enough("VERIFY_CODE_KEY", value, "the same on every worker")

    @field_validator("cors_origins", "trusted_proxies", mode="before")
    @classmethod
    def _parse_list(cls, value: object) -> object:
        """Comma-separated in the environment."""
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _parse_sentinels(cls, value: object) -> object:
        """Accept `host:port,host:port` (port 26379 when left out)."""
        if not isinstance(value, str):
            return value
        sentinels: list[tuple[str, int]] = []
        for item in filter(None, (part.strip() for part in value.split(","))):
            host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
            sentinels.append((host.strip("[]"), int(port or 26379)))
        return sentinels

    @field_validator("worker_queues", mode="before")
    @classmethod
    def _parse_queue_weights(cls, value: object) -> object:
        """Accept `critical:10,default:5`, the way asynq's Queues map is usually written."""
        if not isinstance(value, str):
            return value
        weights: dict[str, int] = {}
        for item in filter(None, (part.strip() for part in value.split(","))):
            name, _, weight = item.partition(":")
            weights[name.strip()] = int(weight or 1)
        return weights

    @field_validator("worker_queues")
    @classmethod
    def _check_queue_weights(cls, value: dict[str, int]) -> dict[str, int]:
        if not value or any(weight < 1 for weight in value.values()):
            raise ValueError("needs at least one queue, each with a weight of 1 or more")
        return value

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """Printed settings show no secret: SecretStr fields mask themselves, URLs lose their
        passwords here."""
        for name, value in super().__repr_args__():
            yield name, mask_url(value) if name in _URL_FIELDS else value


_URL_FIELDS = {"database_url", "redis_url"}


def _long_enough(name: str, value: SecretStr | None, advice: str) -> SecretStr | None:
    if value is not None and len(value.get_secret_value()) < MIN_SECRET_LENGTH:
        raise ValueError(
            f"{name} must be at least {MIN_SECRET_LENGTH} characters "
            f"(e.g. `openssl rand -hex 32`), {advice}"
        )
    return value


def mask_url(url: object) -> object:
    """`scheme://user:secret@host/…` as `scheme://user:***@host/…`."""
    if not isinstance(url, str):
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    return Settings()
