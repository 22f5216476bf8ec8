"""Debian's nginx, running deploy/production/nginx.conf in front of upstreams the test chose.

The deploy file is the http-level part an operator includes; this module wraps it in a main
context of its own (pid file, error log, temporary paths, all under the folder given) and runs
`nginx -p FOLDER -c FOLDER/nginx.conf -e FOLDER/error.log` in the foreground (`daemon off`), so
that no system path is read or written. Its files are in `FOLDER/nginx-PORT/`. Listens on
127.0.0.1 only.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

from tests.support.binaries import require
from verimail_shared.embedded import free_port, wait_for_port

DEPLOY_CONF = Path(__file__).resolve().parents[2] / "deploy" / "production" / "nginx.conf"
_PLACEHOLDER = re.compile(r"(?<!\$)\{([a-z_]+)\}")

# Workers run as root in the test bed: as `nobody` they could not enter a folder under pytest's
# 0700 tmp_path, so a response bigger than the proxy buffers would fail to spill to disk.
_MAIN = """\
# The test bed's main context around deploy/production/nginx.conf.
daemon off;
worker_processes 2;
pid {folder}/nginx.pid;
error_log {folder}/error.log info;
{user}
events {
    worker_connections 512;
}
http {
    default_type application/octet-stream;
    client_body_temp_path {folder}/temp/body;
    proxy_temp_path {folder}/temp/proxy;
    fastcgi_temp_path {folder}/temp/fastcgi;
    uwsgi_temp_path {folder}/temp/uwsgi;
    scgi_temp_path {folder}/temp/scgi;
    include {folder}/verimail.conf;
}
"""


class NginxConfigError(RuntimeError):
    """`nginx -t` refused the rendered configuration; the message is its output."""


def fill(template: str, values: Mapping[str, str]) -> str:
    """`template` with each `{name}` replaced, except in comment lines (which list them);
    nginx's own braces and Postfix's `${name}` are left alone."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"no value for the placeholder {{{name}}}")
        return values[name]

    lines = template.splitlines(keepends=True)
    return "".join(
        line if line.lstrip().startswith("#") else _PLACEHOLDER.sub(value, line) for line in lines
    )


class Nginx:
    """nginx terminating TLS on a free loopback port and proxying to `upstreams` (ports)."""

    def __init__(
        self, folder: Path, *, upstreams: list[int], cert_file: Path, key_file: Path
    ) -> None:
        if not upstreams:
            raise ValueError("nginx needs at least one upstream port")
        self._port = free_port()
        # A folder of its own, so that other servers (or another nginx) may share `folder`.
        self.folder = folder.resolve() / f"nginx-{self._port}"
        self.upstreams = list(upstreams)
        self.cert_file = cert_file.resolve()
        self.key_file = key_file.resolve()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"https://localhost:{self._port}"

    @property
    def error_log(self) -> Path:
        return self.folder / "error.log"

    @property
    def access_log(self) -> Path:
        return self.folder / "access.log"

    def render(self) -> Path:
        """Write the deploy file, filled in, and the main context around it; return the latter."""
        for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.folder / "temp" / name).mkdir(parents=True, exist_ok=True)
        servers = "\n    ".join(f"server 127.0.0.1:{port};" for port in self.upstreams)
        site = fill(
            DEPLOY_CONF.read_text(),
            {
                "upstream_servers": servers,
                "listen_address": "127.0.0.1",
                "listen_port": str(self._port),
                "cert_file": str(self.cert_file),
                "key_file": str(self.key_file),
                "access_log": str(self.access_log),
            },
        )
        (self.folder / "verimail.conf").write_text(site)
        user = "user root root;" if os.geteuid() == 0 else ""
        main = self.folder / "nginx.conf"
        main.write_text(fill(_MAIN, {"folder": str(self.folder), "user": user}))
        return main

    def check(self) -> None:
        """Run `nginx -t` on the rendered files; raise NginxConfigError with what it said."""
        result = subprocess.run(
            [*self._argv(), "-t"], capture_output=True, text=True, timeout=30, check=False
        )
        if result.returncode != 0:
            raise NginxConfigError(result.stderr.strip() or result.stdout.strip())

    def start(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self.render()
        self.check()
        with (self.folder / "nginx.out").open("ab") as out:
            self._process = subprocess.Popen(
                self._argv(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            wait_for_port(self._port, 15)
        except TimeoutError as exc:
            self.stop()
            raise RuntimeError(f"nginx did not start:\n{self._log_tail()}") from exc

    def stop(self) -> None:
        """Graceful stop (SIGQUIT), then SIGKILL after 10 s; does nothing when not running."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGQUIT)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)

    def _argv(self) -> list[str]:
        return [
            require("nginx"),
            "-p",
            str(self.folder),
            "-c",
            str(self.folder / "nginx.conf"),
            "-e",
            str(self.error_log),
        ]

    def _log_tail(self) -> str:
        lines: list[str] = []
        for log in (self.folder / "nginx.out", self.error_log):
            if log.exists():
                lines += log.read_text(errors="replace").splitlines()[-20:]
        return "\n".join(lines)
