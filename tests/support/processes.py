"""The real Verimail commands and servers as subprocesses, stopped with SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path


def command(name: str) -> str:
    """A console script of the virtualenv the tests run in."""
    return str(Path(sys.executable).with_name(name))


class Process:
    """One subprocess whose output goes to a log file."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.env = env
        self.log = log
        self._file = log.open("ab")
        self.process = subprocess.Popen(
            argv, env=env, stdout=self._file, stderr=subprocess.STDOUT, cwd=log.parent
        )

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def lines(self) -> list[dict[str, object]]:
        """The JSON log lines written so far."""
        return [
            json.loads(line) for line in self.log.read_text().splitlines() if line.startswith("{")
        ]

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to clean up."""
        if self.running:
            self.process.kill()
        self.process.wait(10)

    def stop(self, timeout: float = 30) -> int:
        if self.running:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self._file.close()


def service(name: str, env: dict[str, str], log: Path) -> Process:
    """`verimail-api`, `verimail-worker`, … with `env` on top of this process's environment."""
    return Process([command(name)], log, {**os.environ, **env})
