"""The harness every bench script shares: servers, worker processes, the run loop, the drain
timer, the table of medians with ratios, and the results file.

A script builds its command line with `parser`, opens the servers with `Bench.running`, walks
`interleaved(sides, runs)` (every side once per run, so load on a shared machine hits each side
alike), and ends with `print_ratio_table` and `write_results`. Worker processes are the script
itself run again with a worker command (`--kind`, `--redis-url`), started by `Bench.spawn`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

RESULTS = Path(__file__).parent / "results"
PROFILES = RESULTS / "profiles"
PROFILE_RATE = 200  # py-spy samples per second
DONE_KEY = "bench:done"
# streaq needs Redis 7 (stream commands); every side shares one server, so all get the same.
MIN_REDIS = (7, 0)


# ---------------------------------------------------------------- the command line


def parser(doc: str | None, workers: Sequence[str] = ("worker",)) -> argparse.ArgumentParser:
    """The arguments every bench takes: the command (`run`, or a worker process's), `--runs`
    and `--redis-url`; `--kind` names the side a worker process runs."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", nargs="?", default="run", choices=["run", *workers])
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs (medians of them)")
    parser.add_argument(
        "--redis-url",
        help=f"a Redis {MIN_REDIS[0]}+ or Valkey server to use (the bench FLUSHES its database); "
        "default: a throwaway one (the embedded helper's, or redis-server from PATH)",
    )
    parser.add_argument("--kind", help="the side a worker process runs (set by the bench)")
    return parser


def interleaved(
    sides: Sequence[str], runs: int, alternate: bool = False
) -> Iterator[tuple[int, str]]:
    """(run, side) for every side in every run; with `alternate`, odd runs go in reverse so no
    side always meets a warmer server."""
    for run in range(runs):
        yield from ((run, side) for side in (sides[::-1] if alternate and run % 2 else sides))


# ---------------------------------------------------------------- servers and processes


class RedisServer:
    """A throwaway `redis-server` (or `valkey-server`) from PATH on a free loopback port."""

    def __init__(self, root: Path, executable: str) -> None:
        from verimail_shared.embedded import free_port

        self.root = root
        self.executable = executable
        self.url = f"redis://127.0.0.1:{free_port()}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        from verimail_shared.embedded import wait_for_port

        self.root.mkdir(parents=True, exist_ok=True)
        port = int(self.url.rsplit(":", 1)[1].split("/")[0])
        options = {"bind": "127.0.0.1", "port": str(port), "dir": str(self.root), "save": ""}
        options |= {"appendonly": "no", "logfile": str(self.root / "redis.log")}
        argv = [
            self.executable,
            *(part for name, value in options.items() for part in (f"--{name}", value)),
        ]
        self._process = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        wait_for_port(port, timeout=20)
        if self._process.poll() is not None:
            raise RuntimeError(f"{self.executable} exited: see {self.root / 'redis.log'}")

    def stop(self) -> None:
        if self._process is not None:
            stop(self._process)


def redis_version(url: str) -> tuple[tuple[int, ...], str]:
    """The Redis protocol version the server claims (Valkey claims 7.2), and its own name,
    version and memory allocator for the report."""
    client = Redis.from_url(url)
    try:
        info = client.info("server")
    finally:
        client.close()
    claimed = tuple(int(part) for part in str(info["redis_version"]).split(".")[:2])
    valkey = "valkey_version" in info
    name = f"Valkey {info['valkey_version']}" if valkey else f"Redis {info['redis_version']}"
    return claimed, f"{name} ({allocator(url)})"


def allocator(url: str) -> str:
    """The server's memory allocator: `jemalloc-5.3.0` as Redis and Valkey ship, `libc` for the
    embedded Valkey wheel."""
    client = Redis.from_url(url)
    try:
        return str(client.info("memory")["mem_allocator"])
    finally:
        client.close()


JEMALLOC_NEEDED = (
    "bytes in Redis are measured on a jemalloc server, as Redis and Valkey ship (the embedded "
    "Valkey's libc malloc sizes an allocation by the heap's history; decision 054): "
    "apt-get install redis-server, or pass --redis-url"
)


def redis_executable() -> str | None:
    """The first valkey-server or redis-server on PATH that is new enough."""
    for folder in os.get_exec_path():
        for name in ("valkey-server", "redis-server"):
            candidate = Path(folder) / name
            if not os.access(candidate, os.X_OK):
                continue
            answer = subprocess.run([candidate, "--version"], capture_output=True, text=True)
            version = answer.stdout.split(" v=")[1].split()[0] if " v=" in answer.stdout else "0"
            if tuple(int(part) for part in version.split(".")[:2]) >= MIN_REDIS:
                return str(candidate)
    return None


class Bench:
    """An embedded PostgreSQL (migrated database `bench`) and one Redis for every side."""

    def __init__(self, root: Path, redis_url: str | None = None, jemalloc: bool = False) -> None:
        """`jemalloc`: the server must allocate with jemalloc, as Redis and Valkey ship, for
        figures in bytes (decision 054); the embedded Valkey allocates with libc malloc."""
        from verimail_shared.embedded import EmbeddedPostgres

        self.root = root
        self.postgres = EmbeddedPostgres(root / "postgres")
        self.given_redis_url = redis_url
        self.jemalloc = jemalloc
        self.redis_server: Any = None
        self.redis_url = redis_url or ""
        self.database_url = ""
        self.verify_code_key = secrets.token_hex(32)  # one for every worker of every side

    @classmethod
    @contextlib.contextmanager
    def running(cls, redis_url: str | None = None, jemalloc: bool = False) -> Iterator[Bench]:
        """A started Bench in a temporary folder, stopped (and the folder removed) at the end."""
        # A SIGTERM unwinds like Ctrl-C, so the servers stop and the folder goes.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        with tempfile.TemporaryDirectory(prefix="verimail-bench-") as tmp:
            bench = cls(Path(tmp), redis_url, jemalloc)
            try:
                bench.start()
                yield bench
            finally:
                bench.stop()

    def start(self) -> None:
        from verimail_shared.migrate import upgrade
        from verimail_shared.settings import Settings

        self.postgres.start()
        self.database_url = self.postgres.create_database("bench")
        upgrade(Settings(_env_file=None, database_url=self.database_url))  # type: ignore[call-arg]
        if self.given_redis_url is None:
            self.redis_server = self._start_redis()
            self.redis_url = self.redis_server.url
        version, self.redis_version = redis_version(self.redis_url)
        if version < MIN_REDIS:
            raise SystemExit(f"Redis {MIN_REDIS[0]}+ needed, {self.redis_url} is {version}")
        if self.jemalloc and not allocator(self.redis_url).startswith("jemalloc"):
            raise SystemExit(f"{self.redis_url} does not allocate with jemalloc: {JEMALLOC_NEEDED}")

    def _start_redis(self) -> Any:
        """The embedded helper's server if it is new enough (and allocates with jemalloc, when
        that is asked for), else redis-server from PATH."""
        from verimail_shared.embedded import EmbeddedRedis

        embedded = EmbeddedRedis(self.root / "redis", appendonly=False)
        embedded.start()
        if redis_version(embedded.url)[0] >= MIN_REDIS and (
            not self.jemalloc or allocator(embedded.url).startswith("jemalloc")
        ):
            return embedded
        embedded.stop()
        executable = redis_executable()
        if executable is None:
            needed = f"needs Redis {MIN_REDIS[0]}+: apt-get install redis-server, or --redis-url"
            raise SystemExit(JEMALLOC_NEEDED if self.jemalloc else needed)
        server = RedisServer(self.root / "redis-server", executable)
        while server.url == embedded.url:  # the stopped server's port may not be free yet
            server = RedisServer(self.root / "redis-server", executable)
        server.start()
        return server

    def stop(self) -> None:
        if self.redis_server is not None:
            self.redis_server.stop()
        self.postgres.stop()

    def settings(self, **overrides: Any) -> Any:
        """verimail Settings for these servers."""
        from verimail_shared.settings import Settings

        return Settings(
            _env_file=None,
            database_url=self.database_url,
            redis_url=self.redis_url,
            verify_code_key=self.verify_code_key,
            **overrides,
        )

    def env(self, **overrides: str) -> dict[str, str]:
        """The environment of a verimail process on these servers: JSON logs at INFO, no
        metrics port of its own unless `overrides` give one."""
        return {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
            "WORKER_METRICS_PORT": "0",
            "VERIFY_CODE_KEY": self.verify_code_key,
            **overrides,
        }

    def spawn(
        self, argv: Sequence[str], log: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start `argv` with its output in `log` (a file in the bench's folder)."""
        out = (self.root / f"{log}.log").open("ab")
        return subprocess.Popen(
            list(argv), env=env or self.env(), stdout=out, stderr=subprocess.STDOUT
        )

    def spawn_worker(self, script: str, kind: str, env: dict[str, str] | None = None) -> Any:
        """`script` run again as the worker process of side `kind`."""
        argv = [sys.executable, script, "worker", "--kind", kind, "--redis-url", self.redis_url]
        return self.spawn(argv, f"{Path(script).stem}-{kind}", env)

    def postgres_pid(self) -> int:
        return int((self.postgres.pgdata / "postmaster.pid").read_text().split()[0])


def stop(process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM, and SIGKILL if it has not exited within `timeout` seconds."""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# ---------------------------------------------------------------- measuring and reporting


async def drain_rate(
    redis: AsyncRedis,
    done_key: str,
    count: int,
    worker: subprocess.Popen[bytes],
    profiler: Profiler | None = None,
) -> float:
    """Tasks per second from the first completion counted at `done_key` to the last; fails fast
    if the worker process dies before the end. A `profiler` starts at the first completion."""
    started = None
    while True:
        done = int(await redis.get(done_key) or 0)
        if done and started is None:
            started = time.perf_counter()
            if profiler is not None:
                profiler.start()
                profiler.tasks = count - done
        if done >= count:
            break
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.returncode} after {done} of {count}")
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    return (count - 1) / elapsed if elapsed else 0.0


async def drain_worker(
    bench: Bench, script: str, kind: str, count: int, redis: AsyncRedis, profile: bool = False
) -> float:
    """Start `script`'s worker process for side `kind` on the `count` tasks already queued and
    return its drain rate; with `profile`, py-spy samples it from its first completion to its
    last. The process is stopped at the end."""
    worker = bench.spawn_worker(script, kind)
    name = f"{Path(script).stem}-{kind}"
    profiler = Profiler(worker, name) if profile else None
    try:
        return await drain_rate(redis, DONE_KEY, count, worker, profiler)
    except RuntimeError as error:
        raise RuntimeError(f"{kind}: {error}; see {bench.root}/{name}.log") from error
    finally:
        if profiler is not None:
            profiler.stop()
        stop(worker)


class Profiler:
    """py-spy sampling a process, to bench/results/profiles/`name`.speedscope.json; prints where
    the process's CPU went per task when stopped."""

    def __init__(
        self, process: subprocess.Popen[bytes], name: str, *, thread: str | None = None
    ) -> None:
        self.process = process
        self.name = name
        # With a thread's name, also that thread alone (an API's event loop).
        self.thread = thread
        self.output = PROFILES / f"{name}.speedscope.json"
        self.recorder: subprocess.Popen[bytes] | None = None
        self.tasks = 0

    def start(self) -> None:
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        PROFILES.mkdir(parents=True, exist_ok=True)
        options = ["--pid", str(self.process.pid), "--rate", str(PROFILE_RATE), "--nonblocking"]
        options += ["--format", "speedscope", "--output", str(self.output)]
        self.recorder = subprocess.Popen([py_spy, "record", *options], stdout=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.recorder is None:
            return
        self.recorder.send_signal(signal.SIGINT)
        self.recorder.wait(120)
        if self.tasks and self.output.exists():
            print_profile(self.output, self.name, self.tasks)
            if self.thread is not None:
                print_profile(self.output, self.name, self.tasks, thread=self.thread, top=14)


def print_profile(
    path: Path, name: str, tasks: int, top: int = 8, thread: str | None = None
) -> None:
    """The packages and functions that took the most samples (self time), in ms per task; of
    the threads whose name holds `thread`, or of them all."""
    document = json.loads(path.read_text())
    frames = document["shared"]["frames"]
    functions: dict[str, int] = {}
    packages: dict[str, int] = {}
    total = 0
    for profile in document["profiles"]:
        if thread is not None and thread not in profile["name"]:
            continue
        for stack in profile["samples"]:
            if not stack:
                continue
            frame = frames[stack[-1]]
            where = f"{frame['name']} ({Path(frame.get('file') or '?').name})"
            functions[where] = functions.get(where, 0) + 1
            package = package_of(frame.get("file") or "?")
            packages[package] = packages.get(package, 0) + 1
            total += 1
    per_task = 1000 / PROFILE_RATE / tasks
    of = f"{name}, thread {thread}" if thread else name
    print(f"py-spy, {of}: {total * per_task:.3f} ms of samples per task; by package, self time:")
    for package, samples in sorted(packages.items(), key=lambda item: -item[1])[:top]:
        print(f"  {package:<28} {samples * per_task:>7.3f} ms  {samples / total:>5.0%}")
    print("  top functions, self time:")
    for where, samples in sorted(functions.items(), key=lambda item: -item[1])[:top]:
        print(f"  {where[:60]:<60} {samples * per_task:>7.3f} ms  {samples / total:>5.0%}")


def package_of(file: str) -> str:
    """The installed package a source file belongs to, the standard library module, or ours."""
    parts = Path(file).parts
    if "site-packages" in parts:
        return parts[parts.index("site-packages") + 1].removesuffix(".py")
    for marker in ("verimail_worker", "verimail_shared", "verimail_api"):
        if marker in parts:
            return marker
    stdlib = [part for part in parts if part.startswith("python3")]
    if stdlib and parts.index(stdlib[-1]) + 1 < len(parts):
        return "stdlib:" + parts[parts.index(stdlib[-1]) + 1].removesuffix(".py")
    return Path(file).name or "?"


def print_ratio_table(
    runs: dict[str, list[float]], reference: str, unit: str = "tasks/s", digits: int = 0
) -> dict[str, float]:
    """Print side, median, reference ÷ side and every run (`digits` after the point); return
    the medians."""
    medians = {side: statistics.median(values) for side, values in runs.items()}
    heading = f"{unit} (median)"
    print(f"{'side':<14} {heading:>18} {f'{reference} ÷ side':>13}  runs")
    for side, values in runs.items():
        ratio = medians[reference] / medians[side] if medians[side] else float("inf")
        print(
            f"{side:<14} {medians[side]:>18.{digits}f} {ratio:>13.2f}  "
            + ", ".join(f"{v:.{digits}f}" for v in values)
        )
    return medians


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def print_load(label: str, load: tuple[float, float, float]) -> None:
    print(
        f"load average {label}: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} cores"
    )


def write_results(name: str, document: dict[str, Any]) -> Path:
    """bench/results/`name`.json."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path
