"""Verimail's own commands and other servers as real subprocesses, with their logs kept."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from verimail_shared.embedded import free_port, wait_for_port
from verimail_shared.settings import Settings


def command(name: str) -> str:
    """The console script beside this interpreter (the project's virtualenv)."""
    return str(Path(sys.executable).with_name(name))


class Service:
    def __init__(self, name: str, env: dict[str, str], log: Path, *args: str) -> None:
        self.log = log
        self._file = log.open("ab")
        self.process = subprocess.Popen(
            [command(name), *args], env=env, stdout=self._file, stderr=subprocess.STDOUT
        )

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def lines(self) -> list[dict[str, Any]]:
        return [
            json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")
        ]

    def events(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("event") == event]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout)
        self._file.close()
        return code

    def kill(self) -> int:
        return self.stop(signal.SIGKILL)


class Process:
    """Any other server (redis-server, redis-sentinel, prometheus), its output in a log file."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.log = log
        self._file = log.open("ab")
        self.process = subprocess.Popen(
            argv, stdout=self._file, stderr=subprocess.STDOUT, cwd=log.parent
        )

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to clean up."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self._file.close()


def secret(value: SecretStr | None) -> str:
    """A secret setting as an environment variable: empty, which reads as unset, when None."""
    return value.get_secret_value() if value is not None else ""


def system_env(
    settings: Settings, api_port: int, metrics_port: int, **extra: str
) -> dict[str, str]:
    """The environment for `verimail-api` and `verimail-worker` against the test servers."""
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "SMTP_HOST": settings.smtp_host,
        "SMTP_PORT": str(settings.smtp_port),
        "VERIFY_CODE_KEY": secret(settings.verify_code_key),
        "API_PORT": str(api_port),
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{api_port}",
        "WORKER_METRICS_PORT": str(metrics_port),
        "WORKER_POLL_DELAY_SECONDS": "0.05",
        "VERIFY_EMAIL_DEFER_SECONDS": "0",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "INFO",
        **extra,
    }


@dataclass(frozen=True)
class System:
    """`verimail-api` and `verimail-worker` running against the test servers."""

    api: Service
    worker: Service
    env: dict[str, str]
    api_port: int
    metrics_port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"


@contextlib.contextmanager
def running_system(settings: Settings, logs: Path, **extra: str) -> Iterator[System]:
    """Start both commands, wait until they listen, stop them at the end."""
    api_port, metrics_port = free_port(), free_port()
    env = system_env(settings, api_port, metrics_port, **extra)
    api = Service("verimail-api", env, logs / "api.log")
    worker = Service("verimail-worker", env, logs / "worker.log")
    try:
        wait_for_port(api_port, 30)
        wait_for_port(metrics_port, 30)
        yield System(api, worker, env, api_port, metrics_port)
    finally:
        api.stop()
        worker.stop()
