"""Chaos soak: steady signups against the real services while workers, Redis, PostgreSQL and
SMTP fail at random; then count what arrived.

    uv run python bench/chaos.py --duration 90 --rate 5 --mode outbox
    uv run python bench/chaos.py --duration 90 --rate 5 --mode in_transaction   # simplebank

Everything runs on throwaway embedded servers and real subprocesses (`verimail-api`, two
`verimail-worker`s). At the end it waits until the work is done (both queues empty, no job in
progress, no unfinished outbox row, and still so after arq's in-progress timeout, so that a
late duplicate would be counted), then prints signups accepted, emails delivered, missing,
duplicates, phantom, dead letters and the signup-to-email latency, and writes the same as JSON
under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from email import message_from_bytes
from pathlib import Path
from typing import Any

import httpx
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis
from redis.exceptions import RedisError

from verimail_shared.embedded import EmbeddedPostgres, EmbeddedRedis, free_port, wait_for_port
from verimail_shared.jobs import Queue, queue_key
from verimail_shared.settings import Settings
from verimail_worker.worker import create_worker

RESULTS = Path(__file__).parent / "results"


@dataclass
class Inbox:
    received: list[tuple[str, float]] = field(default_factory=list)
    refusing: bool = False

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.refusing:
            return "421 4.3.2 chaos: try again later"
        content = envelope.content if isinstance(envelope.content, bytes) else b""
        self.received.append((str(message_from_bytes(content)["To"]), time.monotonic()))
        return "250 OK"


def command(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


class Soak:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.random = random.Random(args.seed)
        self.postgres = EmbeddedPostgres(root / "postgres")
        self.redis = EmbeddedRedis(root / "redis", appendonly=True)
        self.inbox = Inbox()
        self.smtp = Controller(self.inbox, hostname="127.0.0.1", port=free_port())
        self.api_port = free_port()
        self.workers: list[subprocess.Popen[bytes]] = []
        self.accepted: dict[str, float] = {}
        self.rejected = 0
        self.faults: Counter[str] = Counter()

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis.url,
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(self.smtp.port),
            "API_PORT": str(self.api_port),
            "SIGNUP_ENQUEUE": self.args.mode,
            "VERIFY_EMAIL_DEFER_SECONDS": str(self.args.defer),
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "WARNING",
            "WORKER_POLL_DELAY_SECONDS": "0.05",
            "WORKER_JOB_TIMEOUT_SECONDS": "5",
            "WORKER_SHUTDOWN_GRACE_SECONDS": "5",
            "RETRY_BACKOFF_BASE_SECONDS": "0.2",
            "RETRY_BACKOFF_MAX_SECONDS": "2",
            "OUTBOX_RELAY_AFTER_SECONDS": "2",
            "OUTBOX_RECONCILE_AFTER_SECONDS": "5",
            "DEPENDENCY_TIMEOUT_SECONDS": "2",
            "WORKER_METRICS_PORT": "0",
            "RATE_LIMIT_CREATE_USER": "off",
        }

    def log(self, name: str) -> Any:
        return (self.root / f"{name}.log").open("ab")

    def start_worker(self, slot: int) -> None:
        process = subprocess.Popen(
            [command("verimail-worker")],
            env=self.env(),
            stdout=self.log(f"worker{slot}"),
            stderr=subprocess.STDOUT,
        )
        if slot < len(self.workers):
            self.workers[slot] = process
        else:
            self.workers.append(process)

    def start(self) -> None:
        self.postgres.start()
        self.database_url = self.postgres.create_database("chaos")
        self.redis.start()
        self.smtp.start()
        subprocess.run(
            [command("verimail-migrate")],
            env=self.env(),
            check=True,
            stdout=self.log("migrate"),
            stderr=subprocess.STDOUT,
        )
        self.api = subprocess.Popen(
            [command("verimail-api")],
            env=self.env(),
            stdout=self.log("api"),
            stderr=subprocess.STDOUT,
        )
        for slot in range(self.args.workers):
            self.start_worker(slot)
        wait_for_port(self.api_port, 30)

    async def sign_up(self, client: httpx.AsyncClient, deadline: float) -> None:
        interval = 1 / self.args.rate
        pending: set[asyncio.Task[None]] = set()
        while time.monotonic() < deadline:
            task = asyncio.create_task(self._one(client))
            pending.add(task)
            task.add_done_callback(pending.discard)
            await asyncio.sleep(interval)
        await asyncio.gather(*pending)

    async def _one(self, client: httpx.AsyncClient) -> None:
        tag = uuid.uuid4().hex[:12]
        email = f"soak.{tag}@example.com"
        body = {
            "username": f"soak_{tag}",
            "full_name": "Chaos Soak",
            "email": email,
            "password": "correct horse battery",
        }
        try:
            response = await client.post("/v1/create_user", json=body)
        except httpx.HTTPError:
            self.rejected += 1
            return
        if response.status_code == 200:
            self.accepted[email] = time.monotonic()
        else:
            self.rejected += 1

    async def chaos(self, deadline: float) -> None:
        faults = [
            self.kill_worker,
            self.stop_worker,
            self.crash_redis,
            self.restart_postgres,
            self.refuse_smtp,
            self.lose_redis_writes,
        ]
        while True:
            await asyncio.sleep(self.random.uniform(2, 6))
            if time.monotonic() > deadline - 5:
                return
            fault = self.random.choice(faults)
            self.faults[fault.__name__] += 1
            await fault()

    async def kill_worker(self) -> None:
        slot = self.random.randrange(len(self.workers))
        self.workers[slot].kill()
        await asyncio.to_thread(self.workers[slot].wait)
        self.start_worker(slot)

    async def stop_worker(self) -> None:
        slot = self.random.randrange(len(self.workers))
        self.workers[slot].send_signal(signal.SIGTERM)
        await asyncio.to_thread(self.workers[slot].wait, 30)
        self.start_worker(slot)

    async def crash_redis(self) -> None:
        await asyncio.to_thread(self.redis.kill)
        await asyncio.sleep(self.random.uniform(0.5, 3))
        await asyncio.to_thread(self.redis.start)

    async def lose_redis_writes(self) -> None:
        """What a Sentinel failover to a lagging replica does: the last seconds of writes vanish.

        Copies the append-only file, lets writes go on for a moment, then crashes Redis and
        starts it again from the copy.
        """
        aof = self.redis.data_dir / "appendonly.aof"
        snapshot = await asyncio.to_thread(aof.read_bytes)
        await asyncio.sleep(self.random.uniform(1, 3))
        await asyncio.to_thread(self.redis.kill)
        await asyncio.to_thread(aof.write_bytes, snapshot)
        await asyncio.to_thread(self.redis.start)

    async def restart_postgres(self) -> None:
        await asyncio.to_thread(self.postgres.stop, "fast")
        await asyncio.sleep(self.random.uniform(0.5, 3))
        await asyncio.to_thread(self.postgres.start)

    async def refuse_smtp(self) -> None:
        self.inbox.refusing = True
        await asyncio.sleep(self.random.uniform(2, 5))
        self.inbox.refusing = False

    def users(self) -> set[str]:
        rows = self.postgres.psql("SELECT email FROM users", "chaos")
        return set(filter(None, rows.split("\n")))

    def dead_letters(self) -> int:
        return int(self.postgres.psql("SELECT count(*) FROM dead_tasks", "chaos"))

    async def drain(self, timeout: float) -> bool:
        """Until the work is done and stays done for arq's in-progress timeout: the longest a
        killed worker's job stays hidden before it runs again (and could send a duplicate).
        False if `timeout` came first."""
        settle = self.in_progress_timeout()
        deadline = time.monotonic() + timeout
        async with Redis.from_url(self.redis.url, socket_timeout=2) as redis:
            while time.monotonic() < deadline:
                if await self.idle(redis):
                    await asyncio.sleep(settle)
                    if await self.idle(redis):
                        return True
                await asyncio.sleep(0.5)
        return False

    def in_progress_timeout(self) -> float:
        """arq's in-progress timeout for the soak's workers: their job timeout plus arq's 10 s."""
        fields: dict[str, Any] = {
            name.lower(): value
            for name, value in self.env().items()
            if name.lower() in Settings.model_fields
        }
        settings = Settings(_env_file=None, **fields)
        return create_worker(settings, handle_signals=False).in_progress_timeout_s

    async def idle(self, redis: Redis) -> bool:
        """Both queues empty, no `arq:in-progress:*` key, no unfinished outbox row."""
        try:
            for queue in Queue:
                if await redis.zcard(queue_key(queue)):
                    return False
            if await redis.keys(in_progress_key_prefix + "*"):  # a throwaway Redis: KEYS is fine
                return False
        except RedisError:
            return False
        try:
            unfinished = await asyncio.to_thread(
                self.postgres.psql,
                "SELECT count(*) FROM outbox WHERE completed_at IS NULL",
                "chaos",
            )
        except RuntimeError:  # PostgreSQL not back yet
            return False
        return int(unfinished) == 0

    def report(self, elapsed: float, drained: bool) -> dict[str, Any]:
        users = self.users()
        delivered = Counter(to for to, _ in self.inbox.received)
        first_arrival: dict[str, float] = {}
        for to, at in self.inbox.received:
            first_arrival.setdefault(to, at)
        latencies = sorted(
            first_arrival[email] - at
            for email, at in self.accepted.items()
            if email in first_arrival
        )

        def pct(p: float) -> float | None:
            return (
                round(latencies[min(int(p * len(latencies)), len(latencies) - 1)], 3)
                if latencies
                else None
            )

        return {
            "mode": self.args.mode,
            "drained": drained,
            "duration_seconds": self.args.duration,
            "rate_per_second": self.args.rate,
            "defer_seconds": self.args.defer,
            "seed": self.args.seed,
            "faults": dict(self.faults),
            "signups_accepted": len(self.accepted),
            "signups_rejected": self.rejected,
            "users_in_database": len(users),
            "emails_delivered": sum(delivered.values()),
            "missing": len(users - set(delivered)),
            "duplicates": sum(n - 1 for n in delivered.values() if n > 1),
            "phantom": len(set(delivered) - users),
            "dead_letters": self.dead_letters(),
            "latency_p50_seconds": pct(0.5),
            "latency_p99_seconds": pct(0.99),
            "latency_max_seconds": round(latencies[-1], 3) if latencies else None,
            "wall_seconds": round(elapsed, 1),
        }

    def stop(self) -> None:
        for process in [*self.workers, self.api]:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in [*self.workers, self.api]:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        self.smtp.stop()
        self.redis.stop()
        self.postgres.stop()


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="verimail-chaos-") as tmp:
        run = Soak(args, Path(tmp))
        await asyncio.to_thread(run.start)
        started = time.monotonic()
        try:
            deadline = started + args.duration
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{run.api_port}", timeout=10
            ) as client:
                await asyncio.gather(run.sign_up(client, deadline), run.chaos(deadline))
            drained = await run.drain(args.drain)
            return run.report(time.monotonic() - started, drained)
        finally:
            await asyncio.to_thread(run.stop)


def print_table(result: dict[str, Any]) -> None:
    width = max(map(len, result))
    for key, value in result.items():
        print(f"{key:<{width}}  {value}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=["outbox", "in_transaction"], default="outbox")
    parser.add_argument("--duration", type=float, default=60, help="seconds of signups and faults")
    parser.add_argument("--rate", type=float, default=5, help="signups per second")
    parser.add_argument("--defer", type=float, default=1, help="VERIFY_EMAIL_DEFER_SECONDS")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--drain", type=float, default=180, help="longest wait for the queues")
    args = parser.parse_args()
    result = asyncio.run(soak(args))
    print_table(result)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"chaos-{args.mode}.json").write_text(json.dumps(result, indent=2) + "\n")
    bad = not result["drained"] or result["missing"] or result["duplicates"] or result["phantom"]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
