"""Event-loop CPU per signup of `verimail-api`, against another revision's, in one invocation.

    uv run --frozen --group bench python bench/loop_cpu.py --baseline cce34b2 --signups 1000

What a signup costs the API's event-loop thread (HTTP, validation, the database write, the
enqueue, logs) beside the hash, which runs on other threads. Starts Bench's embedded PostgreSQL
and Redis; then, interleaved in every run, the real `verimail-api` of this tree and of
--baseline (its `services/api` from `git archive`, put ahead on PYTHONPATH; the shared package
is this tree's) with the settings' argon2id parameters (the hash runs on other threads),
JSON logs at INFO, rate limits off. --connections keep-alive connections sign --signups new users
up after a warm-up; the loop thread's CPU time (user + system, from /proc via psutil) over those
signups, divided by their number. Prints medians, per-run figures and the ratio; the APIs'
logs go to bench/results/loop-cpu-api-*.log.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import psutil
import uvloop

sys.path.insert(0, str(Path(__file__).parent))
from common import print_ratio_table
from signup import create_user_request, request
from throughput import RESULTS, Bench

from verimail_shared.embedded import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent


def baseline_tree(revision: str, into: Path) -> Path:
    """`services/api/src` of `revision`, extracted under `into`."""
    archive = subprocess.run(
        ["git", "archive", revision, "services/api/src"],  # noqa: S607
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "services" / "api" / "src"


class Api:
    def __init__(self, bench: Bench, log: Path, pythonpath: Path | None) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "DATABASE_URL": bench.database_url,
            "REDIS_URL": bench.redis_server.url,
            "API_PORT": str(self.port),
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",
            "RATE_LIMIT_CREATE_USER": "off",
        }
        if pythonpath is not None:
            env["PYTHONPATH"] = str(pythonpath)
        self.log = log.open("ab")
        self.process = subprocess.Popen(
            [str(Path(sys.executable).with_name("verimail-api"))],
            env=env,
            cwd=bench.root,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, 30)

    def loop_cpu(self) -> float:
        """CPU seconds of the main (event-loop) thread so far."""
        for thread in psutil.Process(self.process.pid).threads():
            if thread.id == self.process.pid:
                return float(thread.user_time + thread.system_time)
        raise RuntimeError("no main thread")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


async def sign_up(port: int, prefix: str, count: int, connections: int) -> int:
    """`count` signups over `connections` keep-alive connections; how many answered 200."""
    names = iter(range(count))
    ok = 0

    async def one_connection() -> None:
        nonlocal ok
        stream = await asyncio.open_connection("127.0.0.1", port)
        for n in names:
            status, _ = await request(port, create_user_request(f"{prefix}_{n}"), stream)
            ok += status == 200
        stream[1].close()

    await asyncio.gather(*(one_connection() for _ in range(connections)))
    return ok


def measure(api: Api, prefix: str, args: argparse.Namespace) -> float:
    """Milliseconds of event-loop CPU per signup."""
    uvloop.run(sign_up(api.port, f"{prefix}w", args.warmup, args.connections))
    before = api.loop_cpu()
    ok = uvloop.run(sign_up(api.port, prefix, args.signups, args.connections))
    spent = api.loop_cpu() - before
    if ok != args.signups:
        raise RuntimeError(f"{args.signups - ok} signups failed; see the API log")
    return spent / ok * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", required=True, help="git revision to compare against")
    parser.add_argument("--signups", type=int, default=1000, help="measured per run and side")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    sides: dict[str, list[float]] = {"this tree": [], args.baseline: []}
    with tempfile.TemporaryDirectory(prefix="verimail-bench-") as tmp:
        root = Path(tmp)
        trees = {"this tree": None, args.baseline: baseline_tree(args.baseline, root / "base")}
        bench = Bench(root)
        RESULTS.mkdir(exist_ok=True)
        bench.start()
        try:
            for run in range(args.runs):  # interleaved, so load on the machine hits both sides
                for n, (side, tree) in enumerate(trees.items()):
                    api = Api(bench, RESULTS / f"loop-cpu-api-{n}.log", tree)
                    try:
                        sides[side].append(measure(api, f"r{run}s{n}t{int(time.time())}", args))
                    finally:
                        api.stop()
        finally:
            bench.stop()
    print(
        f"event-loop CPU ms per signup, {args.signups} signups per run and side, "
        f"{args.connections} connections, {args.runs} runs; load average {load_before:.1f} "
        f"before, {os.getloadavg()[0]:.1f} after"
    )
    print_ratio_table(sides, reference="this tree", unit="ms per signup", digits=2)


if __name__ == "__main__":
    main()
