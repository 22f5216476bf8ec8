"""A private CA and the certificates the production-shape servers and their clients use.

The files belong to the caller, keys readable by it alone. A server that runs as another user
(PostgreSQL, PgBouncer as root) cannot read them where they are, since pytest's folders are
private: it copies what it reads into a folder of its own (`server_files`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import trustme

CLIENT_NAME = "verimail"  # the client certificate's CN: PostgreSQL's role of that name


@dataclass(frozen=True)
class Certificates:
    ca_file: Path
    server_cert_file: Path
    server_key_file: Path
    client_cert_file: Path
    client_key_file: Path
    other_ca_file: Path  # a CA that signed none of these: what verifies nothing

    def server_files(self) -> dict[str, bytes]:
        """What a server reads, by the names the server helpers give them in their folders."""
        return {
            "server.crt": self.server_cert_file.read_bytes(),
            "server.key": self.server_key_file.read_bytes(),
            "root.crt": self.ca_file.read_bytes(),
        }


def make_certificates(folder: Path) -> Certificates:
    """A new CA, a server certificate for `localhost` and `127.0.0.1`, a client certificate
    with CN `verimail`, and an unrelated CA, as PEM files in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="Verimail test CA")
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert(CLIENT_NAME, common_name=CLIENT_NAME)
    certificates = Certificates(
        ca_file=folder / "ca.crt",
        server_cert_file=folder / "server.crt",
        server_key_file=folder / "server.key",
        client_cert_file=folder / "client.crt",
        client_key_file=folder / "client.key",
        other_ca_file=folder / "other-ca.crt",
    )
    ca.cert_pem.write_to_path(str(certificates.ca_file))
    _write_chain(server, certificates.server_cert_file)
    _write_key(server, certificates.server_key_file)
    _write_chain(client, certificates.client_cert_file)
    _write_key(client, certificates.client_key_file)
    trustme.CA().cert_pem.write_to_path(str(certificates.other_ca_file))
    return certificates


def _write_chain(cert: trustme.LeafCert, path: Path) -> None:
    path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))


def _write_key(cert: trustme.LeafCert, path: Path) -> None:
    # libpq refuses a client key that others may read, as PostgreSQL does a server key.
    path.unlink(missing_ok=True)
    path.touch(mode=0o600)
    path.write_bytes(cert.private_key_pem.bytes())
