"""Verimail's own commands as real subprocesses, with their JSON logs kept for assertions."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any


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
