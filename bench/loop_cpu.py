"""Event-loop CPU per signup of `verimail-api`, against another revision's, in one invocation.

    uv run --frozen --group bench python bench/loop_cpu.py --baseline cce34b2 --signups 1000

What a signup costs the API's event-loop thread (HTTP, validation, the database write, the
enqueue, logs) beside the hash, which runs on other threads. Starts Bench's embedded PostgreSQL
and Redis; then, interleaved in every run, the real `verimail-api` of this tree and of
--baseline (its `services/api/src` and `shared/src` from `git archive`, put ahead on
PYTHONPATH, so that a change to the shared package's enqueue counts too) with the settings'
argon2id parameters (the hash runs on other threads), JSON logs at INFO, rate limits off.
--connections keep-alive connections sign --signups new users up after a warm-up; the loop
thread's CPU time (user + system, from /proc via psutil) over those signups, divided by their
number. Prints medians, per-run figures and the ratio; the APIs'
logs go to bench/results/loop-cpu-api-*.log.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tarfile
import time
from io import BytesIO
from pathlib import Path

import psutil
import uvloop

sys.path.insert(0, str(Path(__file__).parent))
import common
from signup import PASSWORD

from verimail_shared.embedded import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent


def baseline_tree(revision: str, into: Path) -> str:
    """`services/api/src` and `shared/src` of `revision`, extracted under `into`: a PYTHONPATH.

    The database is migrated by this tree; a baseline with other migrations is not comparable.
    """
    archive = subprocess.run(
        ["git", "archive", revision, "services/api/src", "shared/src"],  # noqa: S607
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return f"{into / 'services' / 'api' / 'src'}:{into / 'shared' / 'src'}"


class Api:
    def __init__(self, bench: common.Bench, log: Path, pythonpath: str | None) -> None:
        self.port = free_port()
        env = bench.env(API_PORT=str(self.port), RATE_LIMIT_CREATE_USER="off")
        if pythonpath is not None:
            env["PYTHONPATH"] = pythonpath
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
        common.stop(self.process)
        self.log.close()


# A lean HTTP/1.1 client: this bench counts the API's loop CPU only, so the client need not be wrk.
Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def request(raw: bytes, stream: Stream) -> int:
    """Send one request on `stream` and read the answer; its status."""
    reader, writer = stream
    writer.write(raw)
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


def create_user_request(username: str) -> bytes:
    user = {"username": username, "full_name": "Bench User", "password": PASSWORD}
    body = json.dumps({**user, "email": f"{username}@example.com"}).encode()
    head = (
        "POST /v1/create_user HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def sign_up(port: int, prefix: str, count: int, connections: int) -> int:
    """`count` signups over `connections` keep-alive connections; how many answered 200."""
    names = iter(range(count))
    ok = 0

    async def one_connection() -> None:
        nonlocal ok
        stream = await asyncio.open_connection("127.0.0.1", port)
        for n in names:
            status = await request(create_user_request(f"{prefix}_{n}"), stream)
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
    cli = common.parser(__doc__, workers=())
    cli.add_argument("--baseline", required=True, help="git revision to compare against")
    cli.add_argument("--signups", type=int, default=1000, help="measured per run and side")
    cli.add_argument("--warmup", type=int, default=200)
    cli.add_argument("--connections", type=int, default=8)
    args = cli.parse_args()
    load = common.load_average()
    sides: dict[str, list[float]] = {"this tree": [], args.baseline: []}
    with common.Bench.running(args.redis_url) as bench:
        trees = {
            "this tree": None,
            args.baseline: baseline_tree(args.baseline, bench.root / "base"),
        }
        common.RESULTS.mkdir(exist_ok=True)
        for run, side in common.interleaved(list(trees), args.runs):
            n = list(trees).index(side)
            api = Api(bench, common.RESULTS / f"loop-cpu-api-{n}.log", trees[side])
            try:
                sides[side].append(measure(api, f"r{run}s{n}t{int(time.time())}", args))
            finally:
                api.stop()
    print(
        f"event-loop CPU ms per signup, {args.signups} signups per run and side, "
        f"{args.connections} connections, {args.runs} runs"
    )
    common.print_ratio_table(sides, reference="this tree", unit="ms per signup", digits=2)
    common.print_load("at the start", load)


if __name__ == "__main__":
    main()
