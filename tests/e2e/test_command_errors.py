"""Every command's start-up errors: one line on stderr naming the fix, a non-zero exit.

Real PostgreSQL servers of the tests' own (one with password authentication for its role),
the commands as subprocesses, as a person runs them from the README.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import command
from verimail_shared.embedded import EmbeddedPostgres, free_port

ROLE, PASSWORD = "verimail_app", "right-password"
# Each command as run on its own; `--wait 1` so that the one-shot commands give up on an
# unreachable server within seconds.
COMMANDS = {
    "verimail-migrate": ["--wait", "1"],
    "verimail-api": [],
    "verimail-worker": [],
    "verimail-dev": ["run", "--wait", "1"],
}
ONE_SHOT = ["verimail-migrate", "verimail-dev"]
SERVICES = ["verimail-api", "verimail-worker"]


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


def environment(database_url: str, redis_url: str = "redis://127.0.0.1:1/0") -> dict[str, str]:
    """By default, a Redis that is never reached: the database check comes first."""
    return {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SMTP_HOST": "127.0.0.1",
        "API_PORT": str(free_port()),
        "WORKER_METRICS_PORT": str(free_port()),
    }


def run(
    name: str, database_url: str, tmp_path: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [command(name), *COMMANDS[name], *extra],
        env=environment(database_url),
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
    wait = ["--wait", "300"] if name in ONE_SHOT else []
    done = run(name, postgres.url_for("verimail_absent"), tmp_path, *wait)
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
    ],
)
def test_a_bad_database_setting_is_one_line_and_a_non_zero_exit(
    postgres: EmbeddedPostgres, tmp_path: Path, name: str, case: str, words: list[str]
) -> None:
    urls = {
        "scheme": "mysql://root@127.0.0.1/verimail",
        "port": "postgresql://postgres@127.0.0.1:fivefourthreetwo/verimail",
        "password": f"postgresql://{ROLE}:wrong-password@127.0.0.1:{postgres.port}/postgres",
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


@pytest.mark.parametrize("name", ONE_SHOT)
def test_a_one_shot_command_gives_up_on_an_unreachable_server_in_one_line(
    tmp_path: Path, name: str
) -> None:
    done = run(name, f"postgresql://postgres@127.0.0.1:{free_port()}/verimail", tmp_path)
    assert_one_line_error(done, name, "refused the connection", "waited 1 s")


@pytest.mark.parametrize("name", SERVICES)
def test_a_service_starts_through_a_database_outage_and_says_so(
    tmp_path: Path, redis_url: str, name: str
) -> None:
    """The API and the worker ride out PostgreSQL outages (503s, retried tasks), so they also
    start during one: a warning, no error, and the process keeps running."""
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/verimail"
    log = tmp_path / "out.log"
    with log.open("wb") as out:
        service = subprocess.Popen(
            [command(name)], env=environment(url, redis_url), cwd=tmp_path, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 60
        while "database_not_ready" not in log.read_text():
            assert service.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        assert "refused the connection" in log.read_text()
        assert service.poll() is None
    finally:
        service.terminate()
        service.wait(30)
    assert "Traceback" not in log.read_text()
