"""Debian's PgBouncer, configured by the very file operators deploy (deploy/production/pgbouncer.ini).

PgBouncer refuses to run as root, so as root it runs as the embedded PostgreSQL's system user,
from a folder of its own that this user can reach (decision 030); its log is in `folder`.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import subprocess
import time
import weakref
from pathlib import Path
from urllib.parse import quote

import pytest

from verimail_shared.embedded import (
    _PG_SYSTEM_USER,
    _ensure_system_user,
    _new_home,
    free_port,
    wait_for_port,
)

TEMPLATE = Path(__file__).parents[2] / "deploy" / "production" / "pgbouncer.ini"
PSQL = Path("/usr/lib/postgresql/15/bin/psql")  # the admin console speaks simple queries only
ADMIN_USER = "pgbouncer_admin"
HOST = "localhost"  # the name in the certificates


class PgBouncer:
    """PgBouncer on a loopback port in front of `upstream_host:upstream_port`.

    `users` are the logins it accepts (and uses upstream); `server_tls_ca_file` turns on
    verify-full TLS to PostgreSQL, `client_tls` (certificate, key) TLS from clients, who check
    it against `client_ca_file` (by default the server's CA).
    """

    def __init__(
        self,
        folder: Path,
        upstream_host: str,
        upstream_port: int,
        *,
        pool_mode: str = "transaction",
        default_pool_size: int = 4,
        users: dict[str, str],
        server_tls_ca_file: Path | None = None,
        client_tls: tuple[Path, Path] | None = None,
        client_ca_file: Path | None = None,
    ) -> None:
        binary = shutil.which("pgbouncer", path="/usr/sbin:/usr/bin")
        if binary is None:
            pytest.skip("pgbouncer is not installed (make tools)")
        self.binary = binary
        self.folder = folder / "pgbouncer"
        self.upstream_host, self.upstream_port = upstream_host, upstream_port
        self.pool_mode, self.default_pool_size = pool_mode, default_pool_size
        self.users = dict(users)
        self.server_tls_ca_file = server_tls_ca_file
        self.client_tls = client_tls
        self.client_ca_file = client_ca_file or server_tls_ca_file
        if client_tls is not None and self.client_ca_file is None:
            raise ValueError("client TLS needs a CA for clients to check it: client_ca_file")
        self.port = free_port()
        self.admin_password = secrets.token_urlsafe(24)
        self._user = _PG_SYSTEM_USER if os.geteuid() == 0 else None
        self._home: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._finalizer: (
            weakref.finalize[[subprocess.Popen[bytes], Path | None], PgBouncer] | None
        ) = None

    @property
    def admin_url(self) -> str:
        """The admin console's URL."""
        return self.url_for(ADMIN_USER, self.admin_password, "pgbouncer")

    def url_for(self, user: str, password: str, database: str) -> str:
        """A libpq URL to `database` through PgBouncer, verifying its certificate if it has one."""
        url = f"postgresql://{quote(user)}:{quote(password)}@{HOST}:{self.port}/{database}"
        if self.client_tls is None or self.client_ca_file is None:
            return url
        return f"{url}?sslmode=verify-full&sslrootcert={quote(str(self.client_ca_file))}"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self._write_files()
        with (self.folder / "pgbouncer.log").open("ab") as log:
            self._process = subprocess.Popen(
                [self.binary, str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                user=self._user,
                start_new_session=True,
            )
        self._finalizer = weakref.finalize(self, _discard, self._process, self._home)
        self._wait_until_listening()

    def stop(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self._process = None
        self._home = None

    def restart(self) -> None:
        """Kill and start again on the same port: every client and server connection drops."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """PAUSE: returns once every server connection is back in its pool; from then on,
        queries wait (up to query_wait_timeout) until `resume`."""
        self.admin("PAUSE")

    def resume(self) -> None:
        self.admin("RESUME")

    def admin(self, command: str) -> str:
        """One admin-console command (SHOW POOLS, PAUSE, RELOAD...), through psql."""
        if not PSQL.is_file():
            pytest.skip(f"{PSQL} is not installed (make tools)")
        done = subprocess.run(
            [str(PSQL), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", command, self.admin_url],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"pgbouncer {command} failed: {done.stderr.strip()}")
        return done.stdout

    def _write_files(self) -> Path:
        """The configuration and what it names, where PgBouncer's user can read them."""
        place = self._run_folder()
        auth = {**self.users, ADMIN_USER: self.admin_password}
        _private(place / "userlist.txt", "".join(f'"{u}" "{p}"\n' for u, p in auth.items()))
        values = {
            "upstream_host": self.upstream_host,
            "upstream_port": str(self.upstream_port),
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "logfile": "",  # stderr, into `folder`
            "pidfile": "",
            "pool_mode": self.pool_mode,
            "default_pool_size": str(self.default_pool_size),
            "auth_file": str(place / "userlist.txt"),
            "admin_users": ADMIN_USER,
            "server_tls_ca_file": "",
            "client_tls_cert_file": "",
            "client_tls_key_file": "",
        }
        overrides: dict[str, str] = {}
        if self.server_tls_ca_file is None:
            overrides["server_tls_sslmode"] = "disable"
        else:
            _private(place / "root.crt", self.server_tls_ca_file.read_text())
            values["server_tls_ca_file"] = str(place / "root.crt")
        if self.client_tls is None:
            overrides["client_tls_sslmode"] = "disable"
        else:
            cert, key = self.client_tls
            _private(place / "server.crt", cert.read_text())
            _private(place / "server.key", key.read_text())
            values["client_tls_cert_file"] = str(place / "server.crt")
            values["client_tls_key_file"] = str(place / "server.key")
        config = TEMPLATE.read_text().format(**values)
        for name, value in overrides.items():
            config = re.sub(rf"^{name} = .*$", f"{name} = {value}", config, flags=re.MULTILINE)
        path = place / "pgbouncer.ini"
        _private(path, config)
        if self._user is not None:
            for file in place.iterdir():
                shutil.chown(file, self._user, self._user)
        return path

    def _run_folder(self) -> Path:
        if self._user is None:
            return self.folder
        if self._home is None:
            _ensure_system_user(self._user)
            self._home = _new_home()
        place = self._home / "pgbouncer"
        place.mkdir(mode=0o700, exist_ok=True)
        shutil.chown(place, self._user, self._user)
        return place

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + 20
        while self._process is not None and self._process.poll() is None:
            with contextlib.suppress(TimeoutError):
                wait_for_port(self.port, timeout=0.5)
                return
            if time.monotonic() > deadline:
                break
        log = (self.folder / "pgbouncer.log").read_text()[-2000:]
        self.stop()
        raise RuntimeError(f"pgbouncer did not start listening on {self.port}:\n{log}")


def _private(path: Path, text: str) -> None:
    """`text` in a file that only its owner reads (it may hold passwords or a key)."""
    path.unlink(missing_ok=True)
    path.touch(mode=0o600)
    path.write_text(text)


def _discard(process: subprocess.Popen[bytes], home: Path | None) -> None:
    """Kill PgBouncer, then remove the folder of its own it had as root."""
    if process.poll() is None:
        process.kill()
    process.wait(10)
    if home is not None:
        shutil.rmtree(home, ignore_errors=True)
