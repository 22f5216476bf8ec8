"""Settings parsing and database URLs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from verimail_shared.db import libpq_url
from verimail_shared.settings import Settings


def test_queue_weights_parse_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_QUEUES", "critical:6, default:3,low")
    assert Settings(_env_file=None).worker_queues == {"critical": 6, "default": 3, "low": 1}


def test_queue_weights_must_be_positive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_QUEUES", "critical:0")
    with pytest.raises(ValidationError):
        Settings(_env_file=None)


def test_defaults_match_simplebank() -> None:
    settings = Settings(_env_file=None)
    assert settings.verify_email_defer_seconds == 10
    assert settings.verify_email_max_tries == 10
    assert settings.worker_queues == {"critical": 10, "default": 5}


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://u:p@h:5432/db", "postgresql://u:p@h:5432/db"),
        ("postgres://u@h/db", "postgresql://u@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql://u@h/db"),
        (
            "postgresql://u@h/db?sslmode=verify-full&sslrootcert=/ca.crt",
            "postgresql://u@h/db?sslmode=verify-full&sslrootcert=/ca.crt",
        ),
    ],
)
def test_database_urls_keep_libpqs_spelling(given: str, expected: str) -> None:
    assert libpq_url(given) == expected


def test_other_schemes_are_refused() -> None:
    with pytest.raises(ValueError, match="postgresql://"):
        libpq_url("mysql://h/db")


def test_secrets_are_masked_when_printed() -> None:
    settings = Settings(_env_file=None, smtp_password="hunter2-secret")
    assert "hunter2-secret" not in repr(settings) and "hunter2-secret" not in str(settings)


def test_sentinels_parse_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_SENTINELS", "s1:26379, 10.0.0.2:26380,s3")
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "verimail")
    settings = Settings(_env_file=None)
    assert settings.redis_sentinels == [("s1", 26379), ("10.0.0.2", 26380), ("s3", 26379)]
    assert settings.redis_sentinel_master == "verimail"


def test_without_sentinels_redis_url_is_used_directly() -> None:
    from verimail_shared.queue import redis_settings

    settings = Settings(_env_file=None, redis_url="redis://:pw@h:6380/3")
    assert settings.redis_sentinels == []
    arq = redis_settings(settings)
    assert (arq.host, arq.port, arq.database, arq.sentinel) == ("h", 6380, 3, False)


def test_with_sentinels_arq_asks_them_and_keeps_database_and_password() -> None:
    from verimail_shared.queue import redis_settings

    settings = Settings(
        _env_file=None,
        redis_url="redis://:pw@ignored/2",
        redis_sentinels="a:1,b:2",
        redis_sentinel_master="verimail",
    )
    arq = redis_settings(settings)
    assert arq.sentinel and arq.sentinel_master == "verimail"
    assert arq.host == [("a", 1), ("b", 2)]
    assert (arq.database, arq.password) == (2, "pw")


def test_a_killed_workers_job_runs_again_within_60_seconds_by_default() -> None:
    from verimail_worker.worker import create_worker

    worker = create_worker(Settings(_env_file=None), handle_signals=False)
    # arq lets another worker take the job once its in-progress key expires.
    assert worker.in_progress_timeout_s + Settings().worker_poll_delay_seconds <= 60


def test_database_errors_do_not_quote_their_parameters() -> None:
    from verimail_shared.db import create_engine

    engine = create_engine(Settings(_env_file=None))
    assert engine.sync_engine.hide_parameters


def test_printed_settings_mask_passwords_in_urls() -> None:
    settings = Settings(
        _env_file=None,
        database_url="postgresql://verimail:db-Secret-1@db:5432/verimail",
        redis_url="redis://:redis-Secret-2@redis:6379/0",
    )
    for text in (str(settings), repr(settings)):
        assert "Secret-" not in text
        assert "postgresql://verimail:***@db:5432/verimail" in text
    assert settings.database_url.endswith("db-Secret-1@db:5432/verimail")  # still usable


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_an_empty_variable_means_unset(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name.upper(), "")
    default = Settings.model_fields[name].get_default(call_default_factory=True)
    assert getattr(Settings(_env_file=None), name) == default


def test_empty_secrets_in_the_env_file_are_unset(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("ADMIN_TOKEN=\nSMTP_PASSWORD=\nAPI_METRICS_PORT=\n")
    settings = Settings(_env_file=tmp_path / ".env")
    assert settings.admin_token is None
    assert settings.smtp_password is None and settings.api_metrics_port is None


@pytest.mark.parametrize("name", ["ADMIN_TOKEN", "VERIFY_CODE_KEY"])
@pytest.mark.parametrize("token", ["Q", "Fifteen-Chars-1"])
def test_a_short_secret_is_refused_without_quoting_it(
    monkeypatch: pytest.MonkeyPatch, name: str, token: str
) -> None:
    monkeypatch.setenv(name, token)
    with pytest.raises(ValidationError, match="at least 16 characters") as error:
        Settings(_env_file=None)
    assert token not in str(error.value)


def test_a_16_character_admin_token_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMIN_TOKEN", "sixteen-chars-01")
    token = Settings(_env_file=None).admin_token
    assert token is not None and token.get_secret_value() == "sixteen-chars-01"


ROOT = Path(__file__).resolve().parents[2]
ENV_LINE = re.compile(r"^# ([A-Z][A-Z0-9_]*)=(.*)$")


def env_example() -> dict[str, str]:
    """`.env.example`'s variables, each commented out, with the value it shows."""
    lines = (ROOT / ".env.example").read_text().splitlines()
    assert not [line for line in lines if re.match(r"^\s*[A-Z_]+=", line)], "all commented"
    return {m[1]: m[2] for m in map(ENV_LINE.match, lines) if m}


def readme_configuration_rows() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", section, flags=re.MULTILINE)


def test_env_example_and_readme_list_every_setting_and_nothing_else() -> None:
    settings = {name.upper() for name in Settings.model_fields}
    assert set(env_example()) == settings
    assert set(readme_configuration_rows()) == settings
    assert list(env_example()) == readme_configuration_rows()  # grouped the same way


def test_env_example_shows_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable, value in env_example().items():
        monkeypatch.setenv(variable, value)
    settings = Settings(_env_file=None)
    for name, field in Settings.model_fields.items():
        assert getattr(settings, name) == field.get_default(call_default_factory=True), name
