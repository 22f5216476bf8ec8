"""Every command's start-up errors: one line on stderr naming the fix, a non-zero exit.

Real PostgreSQL servers of the tests' own (one with password authentication for its role),
the commands as subprocesses, as a person runs them from the README.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import command
from verimail_shared.embedded import EmbeddedPostgres, free_port

ROLE, PASSWORD = "verimail_app", "right-password"
# Each command as run on its own; `--wait 1` so an unreachable server fails within seconds.
COMMANDS = {
    "verimail-migrate": ["--wait", "1"],
    "verimail-api": ["--wait", "1"],
    "verimail-worker": ["--wait", "1"],
    "verimail-dev": ["run", "--wait", "1"],
}


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """A fresh server: `postgres` trusted on loopback, ROLE only with its password."""
    server = EmbeddedPostgres(tmp_path_factory.mktemp("postgres"))
    server.start()
    hba = server.pgdata / "pg_hba.conf"
    hba.write_text(f"host all {ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    server.psql(f"CREATE ROLE {ROLE} LOGIN CREATEDB PASSWORD '{PASSWORD}'")
    server.psql("SELECT pg_reload_conf()")
    yield server
    server.stop()


def run(
    name: str, database_url: str, tmp_path: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": database_url,
        "REDIS_URL": "redis://127.0.0.1:1/0",  # never reached: the database check comes first
        "SMTP_HOST": "127.0.0.1",
        "API_PORT": str(free_port()),
        "WORKER_METRICS_PORT": str(free_port()),
    }
    return subprocess.run(
        [command(name), *COMMANDS[name], *extra],
        env=env,
        cwd=tmp_path,  # no .env file
        capture_output=True,
        text=True,
        timeout=60,  # far above --wait: a command that waits for a missing database fails here
    )


def assert_one_line_error(done: subprocess.CompletedProcess[str], name: str, *words: str) -> None:
    assert done.returncode != 0, done
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"{name}: "), lines[0]
    assert "Traceback" not in done.stdout + done.stderr
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("name", ["verimail-migrate", "verimail-api", "verimail-worker"])
def test_a_missing_database_is_named_at_once_with_the_fix(
    postgres: EmbeddedPostgres, tmp_path: Path, name: str
) -> None:
    done = run(name, postgres.url_for("verimail_absent"), tmp_path, "--wait", "300")
    assert_one_line_error(done, name, '"verimail_absent" does not exist', "--create-database")
    assert "database_not_ready" not in done.stdout  # it did not wait


def test_migrate_create_database_creates_then_migrates_and_runs_again_as_a_no_op(
    postgres: EmbeddedPostgres, tmp_path: Path
) -> None:
    name = f"verimail_{uuid.uuid4().hex[:8]}"
    url = f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{postgres.port}/{name}"
    for _ in range(2):
        done = run("verimail-migrate", url, tmp_path, "--create-database")
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""
    tables = postgres.psql("SELECT tablename FROM pg_tables WHERE schemaname = 'public'", name)
    assert "users" in tables.split()


@pytest.mark.parametrize("name", list(COMMANDS))
@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("scheme", ["postgresql://", "mysql://"]),
        ("port", ["DATABASE_URL"]),
        ("password", ["refused the password", ROLE]),
        ("unreachable", ["refused the connection", "waited 1 s"]),
    ],
)
def test_a_bad_database_setting_is_one_line_and_a_non_zero_exit(
    postgres: EmbeddedPostgres, tmp_path: Path, name: str, case: str, words: list[str]
) -> None:
    urls = {
        "scheme": "mysql://root@127.0.0.1/verimail",
        "port": "postgresql://postgres@127.0.0.1:fivefourthreetwo/verimail",
        "password": f"postgresql://{ROLE}:wrong-password@127.0.0.1:{postgres.port}/postgres",
        "unreachable": f"postgresql://postgres@127.0.0.1:{free_port()}/verimail",
    }
    done = run(name, urls[case], tmp_path)
    assert_one_line_error(done, name, *words)
    assert "wrong-password" not in done.stdout + done.stderr


@pytest.mark.parametrize("name", list(COMMANDS))
def test_an_invalid_setting_is_named_in_one_line(tmp_path: Path, name: str) -> None:
    env_done = subprocess.run(
        [command(name), *COMMANDS[name]],
        env={"PATH": "/usr/bin:/bin", "DATABASE_POOL_SIZE": "many"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_one_line_error(env_done, name, "DATABASE_POOL_SIZE")
