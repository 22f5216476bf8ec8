"""Signup at saturation through the real API server driven by wrk, against the raw argon2id
hash rate of the same cores.

    uv run --frozen --group bench python bench/signup.py --duration 30 --runs 3

Needs `wrk` (a C load generator, so the client takes little CPU): `apt-get install wrk`.
Starts Bench's embedded PostgreSQL and Redis and the real `verimail-api` command (uvicorn, JSON
logs at INFO into a file, rate limits off, the argon2id parameters of the settings: their
defaults, or ARGON2_* from the environment). Then, interleaved in every run:

- `argon2id-raw`: one thread per core in this process (as many as the API's hashing pool) hash
  with the same parameters in a tight loop for --duration seconds: the limit of these cores;
- `signup`: wrk with --connections keep-alive connections POSTs /v1/create_user, a new user
  each time (bench/signup.lua), first for --warmup seconds, then for --duration seconds
  measured: signups per second, latency p50/p99 (wrk's), the API's event-loop stalls over that
  window (samples of `verimail_api_event_loop_lag_seconds` over 50 ms, from /metrics), and the
  CPU time per signup of each process: the API's event-loop thread and its other threads
  (hashing), PostgreSQL (every backend), Redis and wrk.

Prints medians and the ratio signup ÷ raw (target >= 0.85), also per run, and writes
bench/results/signup.json (and the API's log to bench/results/signup-api.log). On a machine that
other work loads, more and shorter runs (`--duration 10 --runs 9`) pair the sides more closely.
With `--profile`, one more signup run under py-spy shows where the API's CPU goes per signup, and
where its event-loop thread's goes (uvloop's own C code, socket calls included, shows as
`Runner.run`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from redis import Redis

sys.path.insert(0, str(Path(__file__).parent))
from common import (
    RESULTS,
    Bench,
    Profiler,
    interleaved,
    load_average,
    parser,
    print_ratio_table,
    stop,
    write_results,
)

from verimail_api.passwords import cores, hasher
from verimail_shared.embedded import free_port, wait_for_port
from verimail_shared.settings import Settings

WRK_SCRIPT = Path(__file__).with_name("signup.lua")
WRK_MISSING = "wrk not found: install it with `apt-get install wrk` (Debian, Ubuntu)"
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
        env = bench.env(
            API_PORT=str(self.port),
            ARGON2_TIME_COST=str(settings.argon2_time_cost),
            ARGON2_MEMORY_KIB=str(settings.argon2_memory_kib),
            ARGON2_PARALLELISM=str(settings.argon2_parallelism),
            RATE_LIMIT_CREATE_USER="off",
        )
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
        stop(self.process)
        self.log.close()


@dataclass
class Wrk:
    """One wrk run: its summary (from bench/signup.lua) and its own CPU seconds."""

    summary: dict[str, int]
    cpu_seconds: float


def run_wrk(port: int, connections: int, seconds: float, prefix: str) -> Wrk:
    """wrk for `seconds` against the API; waits for it and takes its CPU time from the kernel."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit(WRK_MISSING)
    threads = min(connections, cores())
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s"]
    argv += ["-s", str(WRK_SCRIPT), f"http://127.0.0.1:{port}/v1/create_user", "--", prefix]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) as process:
        output = process.stdout.read() if process.stdout else ""
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in output.splitlines() if line.startswith("WRK_JSON ")]
    if process.returncode or not lines:
        raise RuntimeError(f"wrk failed ({process.returncode}): {output[-500:]}")
    return Wrk(json.loads(lines[-1].removeprefix("WRK_JSON ")), usage.ru_utime + usage.ru_stime)


@dataclass
class Snapshot:
    """Counters read at one moment: the lag histogram's cumulative buckets, CPU seconds."""

    lag_buckets: dict[float, float]
    cpu: dict[str, float]


def snapshot(api: Api, postgres_pid: int, redis: Redis) -> Snapshot:
    url = f"http://127.0.0.1:{api.port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        body = answer.read().decode()
    buckets = {}
    for line in body.splitlines():
        if line.startswith(f"{LAG_METRIC}_bucket{{"):
            bound = line.split('le="')[1].split('"')[0]
            buckets[float(bound)] = float(line.rsplit(" ", 1)[1])
    threads = psutil.Process(api.process.pid).threads()
    loop_thread = sum(t.user_time + t.system_time for t in threads if t.id == api.process.pid)
    other_threads = sum(t.user_time + t.system_time for t in threads if t.id != api.process.pid)
    info = redis.info("cpu")
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
        },
    )


def signup_run(
    api: Api,
    bench: Bench,
    run: int,
    connections: int,
    warmup: float,
    duration: float,
    profiler: Profiler | None = None,
) -> dict[str, Any]:
    """One measured wrk run after a warm-up one; `profiler` samples the API during it."""
    redis = Redis.from_url(bench.redis_url)
    postgres_pid = bench.postgres_pid()
    if warmup > 0:
        run_wrk(api.port, connections, warmup, f"r{run}w")
    before = snapshot(api, postgres_pid, redis)
    if profiler is not None:
        profiler.start()
    wrk = run_wrk(api.port, connections, duration, f"r{run}m")
    after = snapshot(api, postgres_pid, redis)
    redis.close()
    summary = wrk.summary
    errors = sum(summary[key] for key in summary if key.endswith(("_errors", "timeouts")))
    ok = summary["requests"] - summary["status_errors"]
    if ok < 2:
        raise RuntimeError(f"only {ok} signups succeeded: see {API_LOG}")
    if profiler is not None:
        profiler.tasks = ok
        profiler.stop()
    seconds = summary["duration_us"] / 1e6
    lag = {le: after.lag_buckets[le] - before.lag_buckets.get(le, 0) for le in after.lag_buckets}
    samples = lag[float("inf")]
    cpu = {name: (after.cpu[name] - before.cpu[name]) * 1000 / ok for name in after.cpu}
    cpu["wrk"] = wrk.cpu_seconds * 1000 / ok
    return {
        "signups_per_second": ok / seconds,
        "errors": errors,
        "latency_p50_ms": summary["p50_us"] / 1000,
        "latency_p99_ms": summary["p99_us"] / 1000,
        "latency_max_ms": summary["max_us"] / 1000,
        "lag_samples": samples,
        "lag_over_50ms": samples - lag[STALL_SECONDS],
        # The smallest bucket bound that holds every sample: the largest lag is at most this.
        "lag_max_at_most_ms": min(le for le, n in lag.items() if n == samples) * 1000,
        "cpu_ms_per_signup": cpu,
    }


# ---------------------------------------------------------------- the driver


def main() -> None:
    cli = parser(__doc__, workers=())
    cli.add_argument("--duration", type=float, default=30, help="seconds measured per side")
    cli.add_argument("--warmup", type=float, default=3, help="seconds of load before that")
    cli.add_argument("--connections", type=int, default=16, help="wrk's connections")
    cli.add_argument(
        "--profile", action="store_true", help="then one more signup run with py-spy on the API"
    )
    args = cli.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit(WRK_MISSING)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    load_before = load_average()
    raw: list[HashRate] = []
    signups: list[dict[str, Any]] = []
    with Bench.running(args.redis_url) as bench:
        api = Api(bench, settings)
        try:
            for run, side in interleaved(["argon2id-raw", "signup"], args.runs):
                if side == "argon2id-raw":
                    raw.append(hash_rate(settings, args.duration))
                else:
                    signups.append(
                        signup_run(api, bench, run, args.connections, args.warmup, args.duration)
                    )
            if args.profile:
                profiler = Profiler(api.process, "signup-api", thread="MainThread")
                signup_run(api, bench, args.runs, args.connections, 0, args.duration, profiler)
        finally:
            api.stop()
    report(args, settings, raw, signups, [load_before, load_average()])


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
        f"p={settings.argon2_parallelism}, {cores()} hashing threads, wrk with "
        f"{args.connections} connections, {args.duration:.0f} s per side, {args.runs} runs; "
        f"load average {load[0][0]:.2f} {load[0][1]:.2f} {load[0][2]:.2f} at the start, "
        f"{load[1][0]:.2f} at the end"
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
    write_results(
        "signup",
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
            "medians": {**medians, "cpu_ms_per_raw_hash": hash_cpu, "cpu_ms_per_signup": cpu},
            "ratio_signup_to_raw": ratio,
            "ratio_per_run": paired,
            "ratio_raw_hash_cpu_to_signup_cpu": cpu_bound,
        },
    )


if __name__ == "__main__":
    main()
