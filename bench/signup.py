"""Signup at saturation through the real API server, against the raw argon2id hash rate.

    uv run --frozen --group bench python bench/signup.py --duration 30 --runs 3

Starts Bench's embedded PostgreSQL and Redis and the real `verimail-api` command (uvicorn, JSON
logs at INFO into a file, rate limits off, the argon2id parameters of the settings: their
defaults, or ARGON2_* from the environment). Then, interleaved in every run:

- `argon2id-raw`: one thread per core in this process (as many as the API's hashing pool) hash
  with the same parameters in a tight loop for --duration seconds: the limit of these cores;
- `signup`: --connections keep-alive connections POST /v1/create_user back to back, each with
  a new user, from a lean asyncio client in this process; after --warmup seconds, signups per
  second and latency p50/p99 over --duration seconds, the API's event-loop lag over that window
  (from `verimail_api_event_loop_lag_seconds` on /metrics), and the CPU time per signup of the
  API's event-loop thread and its other threads (hashing), PostgreSQL, Redis and this client.

Prints medians and the ratio signup ÷ raw (target >= 0.85), also per run, and writes
bench/results/signup.json (and the API's log to bench/results/signup-api.log). On a machine that
other work loads, more and shorter runs (`--duration 10 --runs 9`) pair the sides more closely.
Needs nothing beyond the workspace and its `bench` dependency group (psutil).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import uvloop
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).parent))
from common import print_ratio_table
from throughput import RESULTS, Bench

from verimail_api.passwords import cores, hasher
from verimail_shared.embedded import free_port, wait_for_port
from verimail_shared.settings import Settings

PASSWORD = "correct horse battery staple"  # noqa: S105 (a bench user's)
LAG_METRIC = "verimail_api_event_loop_lag_seconds"
STALL_SECONDS = 0.05
API_LOG = RESULTS / "signup-api.log"  # kept after the run, for a failure's cause


# ---------------------------------------------------------------- the physical limit


@dataclass
class HashRate:
    per_second: float
    cpu_ms_per_hash: float


def hash_rate(settings: Settings, duration: float) -> HashRate:
    """argon2id hashes per second from one thread per core (as many as the API's hashing pool)
    hashing flat out, and the CPU time each hash took."""
    argon2 = hasher(settings)
    threads = cores()
    started = time.perf_counter()
    deadline = started + duration

    def hash_until_deadline(_: int) -> tuple[int, float]:
        done, cpu = 0, time.thread_time()
        while time.perf_counter() < deadline:
            argon2.hash(PASSWORD)
            done += 1
        return done, time.thread_time() - cpu

    with ThreadPoolExecutor(threads) as pool:
        results = list(pool.map(hash_until_deadline, range(threads)))
    elapsed = time.perf_counter() - started
    hashes = sum(done for done, _ in results)
    return HashRate(hashes / elapsed, sum(cpu for _, cpu in results) * 1000 / hashes)


# ---------------------------------------------------------------- the API under load


class Api:
    """The `verimail-api` command against the bench's PostgreSQL and Redis."""

    def __init__(self, bench: Bench, settings: Settings) -> None:
        self.port = free_port()
        RESULTS.mkdir(exist_ok=True)
        self.log = API_LOG.open("wb")
        env = {
            **os.environ,
            "DATABASE_URL": bench.database_url,
            "REDIS_URL": bench.redis_server.url,
            "API_PORT": str(self.port),
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
            "ARGON2_TIME_COST": str(settings.argon2_time_cost),
            "ARGON2_MEMORY_KIB": str(settings.argon2_memory_kib),
            "ARGON2_PARALLELISM": str(settings.argon2_parallelism),
            "RATE_LIMIT_CREATE_USER": "off",
        }
        env.pop("API_METRICS_PORT", None)  # /metrics on the API's own port
        self.process = subprocess.Popen(
            [str(Path(sys.executable).with_name("verimail-api"))],
            env=env,
            cwd=bench.root,  # no developer's .env: the defaults, and the environment above
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, 30)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def request(port: int, raw: bytes, stream: Stream | None = None) -> tuple[int, bytes]:
    """Send one HTTP/1.1 request (on `stream` if given, else on a new connection) and read the
    answer: status and body."""
    reader, writer = stream or await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length)
    if stream is None:
        writer.close()
    return status, body


def create_user_request(username: str) -> bytes:
    body = json.dumps(
        {
            "username": username,
            "full_name": "Bench User",
            "email": f"{username}@example.com",
            "password": PASSWORD,
        }
    ).encode()
    head = (
        "POST /v1/create_user HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class Answer:
    finished: float
    latency: float
    status: int


async def sign_up_until(port: int, prefix: str, deadline: float, answers: list[Answer]) -> None:
    """One keep-alive connection signing new users up back to back until `deadline`."""
    stream = await asyncio.open_connection("127.0.0.1", port)
    n = 0
    while time.perf_counter() < deadline:
        raw = create_user_request(f"{prefix}_{n}")
        n += 1
        started = time.perf_counter()
        status, _ = await request(port, raw, stream)
        finished = time.perf_counter()
        answers.append(Answer(finished, finished - started, status))
    stream[1].close()


@dataclass
class Snapshot:
    """Counters read at one moment: the lag histogram's cumulative buckets, CPU seconds."""

    lag_buckets: dict[float, float]
    cpu: dict[str, float]


async def snapshot(api: Api, postgres_pid: int, redis: Redis) -> Snapshot:
    _, body = await request(
        api.port, b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    )
    buckets = {}
    for line in body.decode().splitlines():
        if line.startswith(f"{LAG_METRIC}_bucket{{"):
            bound = line.split('le="')[1].split('"')[0]
            buckets[float(bound)] = float(line.rsplit(" ", 1)[1])
    threads = psutil.Process(api.process.pid).threads()
    loop_thread = sum(t.user_time + t.system_time for t in threads if t.id == api.process.pid)
    other_threads = sum(t.user_time + t.system_time for t in threads if t.id != api.process.pid)
    info = await redis.info("cpu")
    postmaster = psutil.Process(postgres_pid)
    postgres = sum(
        sum(p.cpu_times()[:2]) for p in [postmaster, *postmaster.children(recursive=True)]
    )
    return Snapshot(
        buckets,
        {
            "api_loop_thread": loop_thread,
            "api_other_threads": other_threads,
            "postgres": postgres,
            "redis": float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
            "client": sum(psutil.Process().cpu_times()[:2]),
        },
    )


async def signup_run(
    api: Api, bench: Bench, run: int, connections: int, warmup: float, duration: float
) -> dict[str, Any]:
    redis = Redis.from_url(bench.redis_server.url)
    postgres_pid = int((bench.postgres.pgdata / "postmaster.pid").read_text().split()[0])
    started = time.perf_counter()
    window_start, window_end = started + warmup, started + warmup + duration
    answers: list[Answer] = []
    clients = [
        asyncio.create_task(sign_up_until(api.port, f"r{run}c{c}", window_end, answers))
        for c in range(connections)
    ]
    await asyncio.sleep(window_start - time.perf_counter())
    before = await snapshot(api, postgres_pid, redis)
    await asyncio.sleep(window_end - time.perf_counter())
    after = await snapshot(api, postgres_pid, redis)
    await asyncio.gather(*clients)
    await redis.aclose()
    inside = [a for a in answers if window_start <= a.finished < window_end]
    ok = [a for a in inside if a.status == 200]
    if len(ok) < 2:
        raise RuntimeError(f"only {len(ok)} signups succeeded: see {API_LOG}")
    latencies = sorted(a.latency for a in ok)
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    lag = {le: after.lag_buckets[le] - before.lag_buckets.get(le, 0) for le in after.lag_buckets}
    samples = lag[float("inf")]
    return {
        "signups_per_second": len(ok) / duration,
        "errors": len(inside) - len(ok),
        "latency_p50_ms": cuts[49] * 1000,
        "latency_p99_ms": cuts[98] * 1000,
        "latency_max_ms": latencies[-1] * 1000,
        "lag_samples": samples,
        "lag_over_50ms": samples - lag[STALL_SECONDS],
        # The smallest bucket bound that holds every sample: the largest lag is at most this.
        "lag_max_at_most_ms": min(le for le, n in lag.items() if n == samples) * 1000,
        "cpu_ms_per_signup": {
            name: (after.cpu[name] - before.cpu[name]) * 1000 / len(ok) for name in after.cpu
        },
    }


# ---------------------------------------------------------------- the driver


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=30, help="seconds measured per side")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of load before that")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=4 * cores(), help="concurrent clients")
    args = parser.parse_args()
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    load_before = os.getloadavg()
    raw: list[HashRate] = []
    signups: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="verimail-bench-") as tmp:
        bench = Bench(Path(tmp))
        bench.start()
        api = None
        try:
            api = Api(bench, settings)
            for run in range(args.runs):  # interleaved, so load on the machine hits both sides
                raw.append(hash_rate(settings, args.duration))
                signups.append(
                    uvloop.run(  # the lighter loop: the client shares the cores with the API
                        signup_run(api, bench, run, args.connections, args.warmup, args.duration)
                    )
                )
        finally:
            if api is not None:
                api.stop()
            bench.stop()
    report(args, settings, raw, signups, [load_before, os.getloadavg()])


def report(
    args: argparse.Namespace,
    settings: Settings,
    raw: list[HashRate],
    signups: list[dict[str, Any]],
    load: list[tuple[float, float, float]],
) -> None:
    def median(key: str) -> float:
        return statistics.median(run[key] for run in signups)

    print(
        f"argon2id t={settings.argon2_time_cost} m={settings.argon2_memory_kib} KiB "
        f"p={settings.argon2_parallelism}, {cores()} hashing threads, {args.connections} "
        f"connections, {args.duration:.0f} s per side, {args.runs} runs; load average "
        f"{load[0][0]:.1f} before, {load[1][0]:.1f} after"
    )
    medians = print_ratio_table(
        {
            "signup": [run["signups_per_second"] for run in signups],
            "argon2id-raw": [rate.per_second for rate in raw],
        },
        reference="signup",
        unit="per second",
        digits=1,
    )
    ratio = medians["signup"] / medians["argon2id-raw"]
    # Each run's pair ran back to back: its ratio is the least touched by load that comes and goes.
    paired = [
        run["signups_per_second"] / rate.per_second for run, rate in zip(signups, raw, strict=True)
    ]
    print(
        f"signup ÷ raw hash rate: {ratio:.2f} (target >= 0.85); per run "
        + ", ".join(f"{value:.2f}" for value in paired)
        + f", median {statistics.median(paired):.2f}"
    )
    print(
        f"signup latency p50 {median('latency_p50_ms'):.0f} ms, p99 {median('latency_p99_ms'):.0f}"
        f" ms; errors {sum(run['errors'] for run in signups)}"
    )
    stalls = [run["lag_over_50ms"] for run in signups]
    print(
        f"event-loop lag: samples over 50 ms per run {stalls} (target 0), largest at most "
        f"{max(run['lag_max_at_most_ms'] for run in signups):.0f} ms"
    )
    cpu = {
        name: statistics.median(run["cpu_ms_per_signup"][name] for run in signups)
        for name in signups[0]["cpu_ms_per_signup"]
    }
    hash_cpu = statistics.median(rate.cpu_ms_per_hash for rate in raw)
    # What the ratio would be if these processes had the cores to themselves: the CPU a raw
    # hash takes over the CPU a whole signup takes, summed over every process it runs in.
    cpu_bound = hash_cpu / sum(cpu.values())
    print(
        f"CPU ms per raw hash {hash_cpu:.1f}; per signup "
        + ", ".join(f"{name} {value:.1f}" for name, value in cpu.items())
        + f"; raw hash ÷ signup CPU {cpu_bound:.2f}"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "signup.json").write_text(
        json.dumps(
            {
                "argon2": {
                    "time_cost": settings.argon2_time_cost,
                    "memory_kib": settings.argon2_memory_kib,
                    "parallelism": settings.argon2_parallelism,
                },
                "cores": cores(),
                "connections": args.connections,
                "duration_seconds": args.duration,
                "load_average_before_after": load,
                "raw_runs": [vars(rate) for rate in raw],
                "signup_runs": signups,
                "medians": {
                    **medians,
                    "cpu_ms_per_raw_hash": hash_cpu,
                    "cpu_ms_per_signup": cpu,
                },
                "ratio_signup_to_raw": ratio,
                "ratio_per_run": paired,
                "ratio_raw_hash_cpu_to_signup_cpu": cpu_bound,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
