"""Debian's redis-server as production runs it: TLS only, no persistence, Verimail's ACL user.

The user is made by the very line operators paste (deploy/production/redis-acl.conf), so a
test that passes as `verimail` shows that line grants what Verimail needs. The `default`
user keeps a random password of its own, for the test bed's administration.
"""

from __future__ import annotations

import secrets
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import redis

from tests.support.tls import Certificates
from verimail_shared.embedded import free_port, wait_for_port

ACL_FILE = Path(__file__).parents[2] / "deploy" / "production" / "redis-acl.conf"
USER = "verimail"
HOST = "localhost"  # the name in the server certificate


def acl_setuser(password: str) -> list[str]:
    """The ACL SETUSER line of deploy/production/redis-acl.conf as arguments, with `password`."""
    for line in ACL_FILE.read_text().splitlines():
        if line.startswith("ACL SETUSER"):
            return shlex.split(line.replace("{password}", password))
    raise ValueError(f"{ACL_FILE} has no ACL SETUSER line")


class TlsRedis:
    """redis-server on a TLS-only loopback port, clients unauthenticated by certificate."""

    def __init__(self, folder: Path, certs: Certificates) -> None:
        binary = shutil.which("redis-server", path="/usr/bin:/usr/sbin")
        if binary is None:
            pytest.skip("redis-server is not installed (make tools)")
        self.binary = binary
        self.folder = folder / "redis"
        self.certs = certs
        self.port = free_port()
        self.password = secrets.token_urlsafe(24)
        self.admin_password = secrets.token_urlsafe(24)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def ca_file(self) -> Path:
        return self.certs.ca_file

    @property
    def url(self) -> str:
        return f"rediss://{USER}:{self.password}@{HOST}:{self.port}/0"

    @property
    def admin_url(self) -> str:
        return f"rediss://default:{self.admin_password}@{HOST}:{self.port}/0"

    def admin(self) -> redis.Redis:
        """A client as the `default` user, which may do anything."""
        return redis.Redis.from_url(
            self.admin_url, ssl_ca_certs=str(self.ca_file), socket_timeout=10
        )

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / "redis.log").open("ab") as log:
            self._process = subprocess.Popen(
                [
                    self.binary,
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--tls-port",
                    str(self.port),
                    "--tls-cert-file",
                    str(self.certs.server_cert_file),
                    "--tls-key-file",
                    str(self.certs.server_key_file),
                    "--tls-ca-cert-file",
                    str(self.certs.ca_file),
                    "--tls-auth-clients",
                    "no",
                    "--requirepass",
                    self.admin_password,
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.folder),
                    "--daemonize",
                    "no",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for_port(self.port, timeout=20)
        with self.admin() as admin:
            admin.execute_command(*acl_setuser(self.password))

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.kill()
        self._process.wait(10)
        self._process = None

    def restart(self) -> None:
        """Kill and start again on the same port: connections drop, and so does every key."""
        self.stop()
        self.start()
