"""Chaos soak: steady signups against the real services, deployed as users deploy them, while
processes, Redis, PostgreSQL and SMTP fail at random (seeded); then count what arrived.

    uv run python bench/chaos.py --duration 600 --rate 10 --api-replicas 2 --workers 3 \\
        --sentinel --mode outbox
    uv run python bench/chaos.py ... --mode in_transaction          # simplebank's design

Everything runs on throwaway servers and real subprocesses: `--api-replicas` `verimail-api`
processes (signups go round-robin over them), `--workers` `verimail-worker` processes, and
either one Redis or, with `--sentinel`, a master with one replica and three Sentinels (the
embedded Valkey server, the Sentinels in its sentinel mode), every service finding the master
through REDIS_SENTINELS. The faults, one every few seconds in a seeded random order that deals
every kind before any kind comes again, are the methods `Soak.fault_kinds` lists; see
docs/reliability.md.

At the end it waits until the work is done (both queues empty, no job in progress, no
unfinished outbox row, and still so after arq's in-progress timeout, so that a late duplicate
would be counted), then counts from PostgreSQL and the SMTP server's inbox: missing,
duplicates, phantom, the identical copies sent again after a DATA the server never answered
(decision 090) and after a 250 that was never recorded (decision 091), each on its own line,
dead letters, signups refused by cause, faults by kind, signup-to-email
latency, and every anomaly with its job id, its attempts and the faults around it. It prints
that and writes it as JSON (`--json`, default bench/results/chaos-<mode>.json); it exits 1 on
anything missing, duplicated or phantom, or a drain that timed out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import httpx
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.support

from tests.support.sentinel import MASTER_NAME, SentinelCluster, redis_command

from verimail_shared.embedded import (
    EmbeddedPostgres,
    EmbeddedRedis,
    free_port,
    verification_link,
    wait_for_port,
)
from verimail_shared.jobs import Queue, queue_key
from verimail_shared.settings import Settings
from verimail_worker.worker import create_worker

RESULTS = Path(__file__).parent / "results"
# Sentinel's `down-after-milliseconds`: above the stalls of a loaded machine, which at 1 s made
# the sentinels fail over from healthy masters (production setups use 5 to 30 s).
SENTINEL_DOWN_AFTER_MS = 3000
MESSAGE_ID = re.compile(r"<verify-(?P<job>[^@>]+)@")
# How long the soak waits for a send to strike a mid-send fault at before it gives the fault up.
ARM_TIMEOUT_SECONDS = 15.0
# Faults this close to an anomalous email (before its signup, after its last copy) are listed.
AROUND_SECONDS = 30.0


def command(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


@dataclass
class Mail:
    to: str
    message_id: str
    link: str | None
    at: float
    unanswered: bool = False  # the DATA was taken in and the connection closed without a reply


@dataclass
class Trap:
    """A fault that waits for a send to reach `phase` (RCPT or DATA) and then strikes it."""

    phase: str
    strike: Callable[[Session], Awaitable[None]]
    struck: asyncio.Event = field(default_factory=asyncio.Event)


class Inbox:
    """The SMTP server's handler: keeps every message, and lets the soak make it misbehave."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop  # the soak's loop; aiosmtpd runs on a loop of its own, in a thread
        self.received: list[Mail] = []
        self.refusing = False
        self.unanswered = 0  # how many coming DATA commands get no answer
        self.keep_unanswered = True  # whether the server keeps such a message all the same
        self.unanswered_kept = 0
        self.unanswered_dropped = 0
        self.trap: Trap | None = None
        self._lock = threading.Lock()

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        await self._spring("RCPT", session)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.refusing:
            return "421 4.3.2 chaos: try again later"
        content = envelope.content if isinstance(envelope.content, bytes) else b""
        message = message_from_bytes(content, policy=default_policy)
        mail = Mail(
            to=str(message["To"]),
            message_id=str(message["Message-ID"]),
            link=verification_link(message),
            at=time.monotonic(),
        )
        with self._lock:
            unanswered = self.unanswered > 0
            if unanswered:
                self.unanswered -= 1
        if unanswered:
            # The client cannot tell whether the server took the message: it never hears.
            mail.unanswered = True
            if self.keep_unanswered:
                self.unanswered_kept += 1
                self.received.append(mail)
            else:
                self.unanswered_dropped += 1
            if server.transport is not None:
                server.transport.abort()
            return "250 OK"  # written to a closed transport: nobody reads it
        self.received.append(mail)
        await self._spring("DATA", session)
        return "250 OK"

    async def _spring(self, phase: str, session: Session) -> None:
        trap = self.trap
        if trap is None or trap.phase != phase:
            return
        with self._lock:
            if self.trap is not trap:
                return
            self.trap = None
        # The strike runs on the soak's loop; this connection's answer waits until it is done.
        done = asyncio.run_coroutine_threadsafe(trap.strike(session), self.loop)
        await asyncio.wrap_future(done)
        self.loop.call_soon_threadsafe(trap.struck.set)


class RedisTopology:
    """One Redis (`url`) or a Sentinel-watched master and replica; what the soak does to it."""

    def __init__(self, root: Path, sentinel: bool) -> None:
        self.sentinel = sentinel
        self.single = None if sentinel else EmbeddedRedis(root / "redis", appendonly=True)
        self.cluster = (
            SentinelCluster(root / "sentinel", down_after_ms=SENTINEL_DOWN_AFTER_MS)
            if sentinel
            else None
        )
        if self.cluster is not None:
            (root / "sentinel").mkdir()

    def start(self) -> None:
        if self.single is not None:
            self.single.start()
            return
        assert self.cluster is not None
        self.cluster.start()
        deadline = time.monotonic() + 30
        while not self.cluster.sentinels_ready():
            if time.monotonic() > deadline:
                raise TimeoutError("the sentinels did not converge")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.single is not None:
            self.single.stop()
        if self.cluster is not None:
            self.cluster.stop()

    def env(self) -> dict[str, str]:
        if self.single is not None:
            return {"REDIS_URL": self.single.url}
        assert self.cluster is not None
        return {
            "REDIS_URL": "redis://127.0.0.1/0",  # the database; the host comes from sentinels
            "REDIS_SENTINELS": self.cluster.sentinels_setting,
            "REDIS_SENTINEL_MASTER": MASTER_NAME,
        }

    def client(self) -> Redis:
        if self.single is not None:
            return Redis.from_url(self.single.url, socket_timeout=2)
        assert self.cluster is not None
        sentinels = [("127.0.0.1", port) for port in self.cluster.sentinel_ports]
        return Sentinel(sentinels, socket_timeout=2).master_for(MASTER_NAME, socket_timeout=2)

    def master_port(self) -> int | None:
        assert self.cluster is not None
        for port in self.cluster.sentinel_ports:
            with contextlib.suppress(OSError):
                return self.cluster.master_address(port)
        return None

    async def crash(self, rng: random.Random) -> str:
        """`kill -9` of Redis; with Sentinel, of the master: a real failover."""
        if self.single is not None:
            await asyncio.to_thread(self.single.kill)
            await asyncio.sleep(rng.uniform(0.5, 3))
            await asyncio.to_thread(self.single.start)
            return "redis killed and restarted"
        return await self._failover(lag=0.0)

    async def lose_writes(self, rng: random.Random) -> str:
        """What a failover to a lagging replica does: the last seconds of writes vanish."""
        lag = rng.uniform(1, 3)
        if self.single is None:
            return await self._failover(lag)
        # Copies the append-only files, lets writes go on, crashes the server and restarts it
        # from the copy.
        aof = self.single.data_dir / "appendonlydir"  # Redis 7 / Valkey: a manifest and parts
        snapshot = self.single.data_dir.parent / "appendonlydir.snapshot"
        await asyncio.to_thread(shutil.rmtree, snapshot, True)
        await asyncio.to_thread(shutil.copytree, aof, snapshot)
        await asyncio.sleep(lag)
        await asyncio.to_thread(self.single.kill)
        await asyncio.to_thread(shutil.rmtree, aof)
        await asyncio.to_thread(shutil.copytree, snapshot, aof)
        await asyncio.to_thread(self.single.start)
        return f"redis restarted from its append-only file of {lag:.1f} s before"

    async def _failover(self, lag: float) -> str:
        """Kill the master; the sentinels promote the replica; the old master returns as its
        replica. With `lag`, the replica is cut off from the master for that long first (its
        reconnections fail: a wrong `masterauth`), so the promoted replica lacks those writes."""
        cluster = self.cluster
        assert cluster is not None
        old = await asyncio.to_thread(self.master_port)
        if old is None:
            return "no master known: skipped"
        new = cluster.replica_port if old == cluster.master_port else cluster.master_port
        if lag:
            await asyncio.to_thread(redis_command, new, "CONFIG", "SET", "masterauth", "chaos")
            await asyncio.to_thread(redis_command, old, "CLIENT", "KILL", "TYPE", "replica")
            await asyncio.sleep(lag)
        cluster.servers[old].kill()
        killed = time.monotonic()
        while await asyncio.to_thread(self._master_everywhere) != new:
            if time.monotonic() - killed > 60:
                raise TimeoutError("the sentinels promoted no replica")
            await asyncio.sleep(0.1)
        promoted = time.monotonic() - killed
        if lag:
            await asyncio.to_thread(redis_command, new, "CONFIG", "SET", "masterauth", "")
        await asyncio.to_thread(cluster.restart_server, old, "--replicaof", "127.0.0.1", str(new))
        # The next failover may promote it: only once it holds the data.
        await asyncio.to_thread(cluster.wait_for_replication, old, 60)
        cut = f", replica cut off {lag:.1f} s before" if lag else ""
        return f"master :{old} killed, :{new} promoted after {promoted:.1f} s{cut}"

    def _master_everywhere(self) -> int | None:
        """The master's port if every sentinel names the same one."""
        assert self.cluster is not None
        try:
            seen = {self.cluster.master_address(p) for p in self.cluster.sentinel_ports}
        except OSError:
            return None
        return seen.pop() if len(seen) == 1 else None


class Soak:
    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.random = random.Random(args.seed)
        self.postgres = EmbeddedPostgres(root / "postgres")
        self.redis = RedisTopology(root, args.sentinel)
        self.inbox = Inbox(asyncio.get_running_loop())
        self.smtp = Controller(self.inbox, hostname="127.0.0.1", port=free_port())
        self.api_ports = [free_port() for _ in range(args.api_replicas)]
        self.apis: list[subprocess.Popen[bytes]] = []
        self.workers: list[subprocess.Popen[bytes]] = []
        self.paused: set[int] = set()  # pids under SIGSTOP
        self.restarts: Counter[str] = Counter()
        self.replacing: set[tuple[str, int]] = set()  # slots a fault is restarting itself
        self.processes: list[subprocess.Popen[bytes]] = []  # every one started, stopped at the end
        self.accepted: dict[str, float] = {}
        self.requested: dict[str, float] = {}  # every signup sent, answered or not
        self.refused: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.timeline: list[tuple[float, str, str]] = []
        self.background: set[asyncio.Task[None]] = set()
        self.started = time.monotonic()
        self.signup_seconds = 0.0
        self.verify_code_key = secrets.token_hex(32)

    # -- the system -------------------------------------------------------------------------

    def env(self, api_port: int | None = None) -> dict[str, str]:
        return {
            **os.environ,
            **self.redis.env(),
            "DATABASE_URL": self.database_url,
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(self.smtp.port),
            "VERIFY_CODE_KEY": self.verify_code_key,  # every worker derives the same codes
            "API_PORT": str(api_port or self.api_ports[0]),
            "PUBLIC_BASE_URL": f"http://127.0.0.1:{self.api_ports[0]}",
            "SIGNUP_ENQUEUE": self.args.mode,
            "VERIFY_EMAIL_DEFER_SECONDS": str(self.args.defer),
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "INFO",  # attempts() reads the highest job_try of each job
            "WORKER_POLL_DELAY_SECONDS": "0.05",
            "WORKER_JOB_TIMEOUT_SECONDS": "5",
            "WORKER_SHUTDOWN_GRACE_SECONDS": "5",
            "WORKER_HEALTH_CHECK_INTERVAL_SECONDS": "1",
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
        self.processes.append(process)
        if slot < len(self.workers):
            self.workers[slot] = process
        else:
            self.workers.append(process)

    def start_api(self, slot: int) -> None:
        process = subprocess.Popen(
            [command("verimail-api")],
            env=self.env(self.api_ports[slot]),
            stdout=self.log(f"api{slot}"),
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        if slot < len(self.apis):
            self.apis[slot] = process
        else:
            self.apis.append(process)

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
        for slot in range(self.args.api_replicas):
            self.start_api(slot)
        for slot in range(self.args.workers):
            self.start_worker(slot)
        for port in self.api_ports:
            wait_for_port(port, 300)  # a loaded machine starts eight processes slowly

    async def supervise(self, until: asyncio.Event) -> None:
        """Restart a process that exited on its own, as compose's `restart:` and Kubernetes do."""
        while not until.is_set():
            for kind, processes, start in (
                ("worker", self.workers, self.start_worker),
                ("api", self.apis, self.start_api),
            ):
                for slot, process in enumerate(processes):
                    if (kind, slot) in self.replacing or process.pid in self.paused:
                        continue
                    if process.poll() is not None:
                        self.restarts[kind] += 1
                        self.note("restart", f"{kind}{slot} exited {process.returncode}")
                        start(slot)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(until.wait(), 1)

    # -- signups ----------------------------------------------------------------------------

    async def sign_up(self, done: asyncio.Event) -> None:
        """`--rate` signups a second, round-robin over the API replicas; a replica with
        `--max-in-flight` signups unanswered gets none until it catches up (a client backs off)."""
        clients = [
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=self.args.timeout)
            for port in self.api_ports
        ]
        in_flight: dict[httpx.AsyncClient, set[asyncio.Task[None]]] = {c: set() for c in clients}
        interval = 1 / self.args.rate
        try:
            for client in itertools.cycle(clients):
                if done.is_set():
                    break
                pending = in_flight[client]
                if len(pending) >= self.args.max_in_flight:
                    self.refused["not sent (the replica's in-flight limit)"] += 1
                else:
                    task = asyncio.create_task(self._one(client))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                await asyncio.sleep(interval)
            await asyncio.gather(*(task for tasks in in_flight.values() for task in tasks))
        finally:
            for client in clients:
                await client.aclose()

    async def _one(self, client: httpx.AsyncClient) -> None:
        tag = uuid.uuid4().hex[:12]
        email = f"soak.{tag}@example.com"
        body = {
            "username": f"soak_{tag}",
            "full_name": "Chaos Soak",
            "email": email,
            "password": "correct horse battery",
        }
        sent = self.requested[email] = time.monotonic()
        try:
            response = await client.post("/v1/create_user", json=body)
        except httpx.HTTPError as exc:
            # No answer: the signup may or may not have committed; PostgreSQL says which.
            self.refused[f"no answer ({type(exc).__name__})"] += 1
            return
        if response.status_code == 200:
            self.accepted[email] = sent
            return
        try:
            cause = str(response.json().get("message", ""))[:80]
        except ValueError:
            cause = response.text[:80]
        self.refused[f"{response.status_code} {cause}"] += 1

    # -- faults -----------------------------------------------------------------------------

    def note(self, kind: str, detail: str) -> None:
        self.timeline.append((time.monotonic(), kind, detail))

    def fault_kinds(self) -> list[Callable[[], Awaitable[str | None]]]:
        return [
            self.kill_worker,
            self.stop_worker,
            self.crash_redis,
            self.lose_redis_writes,
            self.restart_postgres,
            self.restart_postgres_mid_send,
            self.refuse_smtp,
            self.unanswered_data,
            self.pause_worker_mid_send,
            self.pause_api,
        ]

    async def chaos(self, deadline: float, done: asyncio.Event) -> None:
        """One fault every `--fault-interval` seconds; every kind once per shuffled round.
        With `--every-kind`, on past `deadline` (up to three times the duration) until each
        kind has struck; `done` tells the signups to stop."""
        try:
            await self._faults(deadline)
        finally:
            done.set()

    async def _faults(self, deadline: float) -> None:
        low, high = self.args.fault_interval
        kinds = {fault.__name__ for fault in self.fault_kinds()}
        last_call = deadline + 2 * self.args.duration
        deck: list[Callable[[], Awaitable[str | None]]] = []
        while True:
            await asyncio.sleep(self.random.uniform(low, high))
            now = time.monotonic()
            every = not self.args.every_kind or set(self.faults) >= kinds
            if now > deadline - 5 and (every or now > last_call):
                return
            if not deck:
                deck = self.fault_kinds()
                self.random.shuffle(deck)
            fault = deck.pop()
            if self.args.one_at_a_time:  # a paused worker's pause ends first
                await asyncio.gather(*self.background)
            detail = await fault()
            if detail is not None:
                self.faults[fault.__name__] += 1
                self.note(fault.__name__, detail)

    def running_workers(self) -> list[int]:
        return [
            slot
            for slot, process in enumerate(self.workers)
            if process.poll() is None and process.pid not in self.paused
        ]

    async def kill_worker(self) -> str | None:
        slots = self.running_workers()
        if not slots:
            return None
        slot = self.random.choice(slots)
        with self.replacing_worker(slot):
            self.workers[slot].kill()
            await asyncio.to_thread(self.workers[slot].wait)
            self.start_worker(slot)
        return f"worker{slot} killed"

    async def stop_worker(self) -> str | None:
        slots = self.running_workers()
        if not slots:
            return None
        slot = self.random.choice(slots)
        with self.replacing_worker(slot):
            self.workers[slot].send_signal(signal.SIGTERM)
            await asyncio.to_thread(self.workers[slot].wait, 30)
            self.start_worker(slot)
        return f"worker{slot} stopped (SIGTERM)"

    @contextlib.contextmanager
    def replacing_worker(self, slot: int) -> Iterator[None]:
        """The supervisor leaves this slot alone meanwhile: it would start a second worker in
        it, which nothing would stop."""
        self.replacing.add(("worker", slot))
        try:
            yield
        finally:
            self.replacing.discard(("worker", slot))

    async def crash_redis(self) -> str:
        return await self.redis.crash(self.random)

    async def lose_redis_writes(self) -> str:
        return await self.redis.lose_writes(self.random)

    async def restart_postgres(self) -> str:
        down = self.random.uniform(0.5, 3)
        await asyncio.to_thread(self.postgres.stop, "fast")
        await asyncio.sleep(down)
        await asyncio.to_thread(self.postgres.start)
        return f"down {down:.1f} s"

    async def restart_postgres_mid_send(self) -> str | None:
        """Stop PostgreSQL while a worker holds a job's row lock: during its SMTP conversation
        (at RCPT, before the message) or after the message's final dot, before the answer."""
        phase = self.random.choice(["RCPT", "DATA"])
        down = self.random.uniform(0.5, 3)

        async def strike(session: Session) -> None:
            await asyncio.to_thread(self.postgres.stop, "fast")

        if not await self.spring(Trap(phase, strike)):
            return None
        await asyncio.sleep(down)
        await asyncio.to_thread(self.postgres.start)
        return f"stopped at {phase}, down {down:.1f} s"

    async def refuse_smtp(self) -> str:
        spell = self.random.uniform(2, 5)
        self.inbox.refusing = True
        await asyncio.sleep(spell)
        self.inbox.refusing = False
        return f"421 for {spell:.1f} s"

    async def unanswered_data(self) -> str:
        """The next few DATA commands get no answer: the server takes the message in (keeps it
        or not, at random) and closes the connection."""
        count = self.random.randint(1, 3)
        self.inbox.keep_unanswered = self.random.random() < 0.5
        self.inbox.unanswered = count
        kept = "kept" if self.inbox.keep_unanswered else "dropped"
        return f"{count} DATA without an answer, messages {kept}"

    async def pause_worker_mid_send(self) -> str | None:
        """SIGSTOP the worker whose SMTP conversation reaches RCPT or its final dot, for longer
        than its in-progress lease, so that another worker runs the job again; then SIGCONT."""
        phase = self.random.choice(["RCPT", "DATA"])
        lease = self.in_progress_timeout()
        pause = lease + self.random.uniform(2, 8)
        stopped: list[int] = []

        async def strike(session: Session) -> None:
            pid = peer_pid(session, [w.pid for w in self.workers if w.poll() is None])
            if pid is not None:
                self.paused.add(pid)
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)

        if not await self.spring(Trap(phase, strike)) or not stopped:
            return None

        async def resume() -> None:
            await asyncio.sleep(pause)
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped[0], signal.SIGCONT)
            self.paused.discard(stopped[0])
            self.note("resumed", f"worker pid {stopped[0]}")

        self.in_background(resume())
        return f"worker pid {stopped[0]} stopped at {phase} for {pause:.1f} s (lease {lease} s)"

    async def pause_api(self) -> str | None:
        """SIGSTOP one API replica with its signups in flight, then SIGCONT."""
        slots = [
            slot
            for slot, process in enumerate(self.apis)
            if process.poll() is None and process.pid not in self.paused
        ]
        if not slots:
            return None
        slot = self.random.choice(slots)
        pid = self.apis[slot].pid
        pause = self.random.uniform(2, 6)
        self.paused.add(pid)
        os.kill(pid, signal.SIGSTOP)
        await asyncio.sleep(pause)
        os.kill(pid, signal.SIGCONT)
        self.paused.discard(pid)
        return f"api{slot} stopped for {pause:.1f} s"

    async def spring(self, trap: Trap) -> bool:
        """Set `trap` and wait for a send to spring it; False (and disarmed) if none comes."""
        self.inbox.trap = trap
        try:
            await asyncio.wait_for(trap.struck.wait(), ARM_TIMEOUT_SECONDS)
        except TimeoutError:
            self.inbox.trap = None
            return trap.struck.is_set()
        return True

    def in_background(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    # -- the end ----------------------------------------------------------------------------

    def in_progress_timeout(self) -> float:
        """arq's in-progress timeout for the soak's workers: their job timeout plus margins."""
        fields: dict[str, Any] = {
            name.lower(): value
            for name, value in self.env().items()
            if name.lower() in Settings.model_fields
        }
        settings = Settings(_env_file=None, **fields)
        return float(create_worker(settings, handle_signals=False).in_progress_timeout_s)

    async def drain(self, timeout: float) -> bool:
        """Until the work is done and stays done for arq's in-progress timeout: the longest a
        killed worker's job stays hidden before it runs again (and could send a duplicate).
        False if `timeout` came first."""
        settle = self.in_progress_timeout()
        deadline = time.monotonic() + timeout
        redis = self.redis.client()
        try:
            while time.monotonic() < deadline:
                if await self.idle(redis):
                    await asyncio.sleep(settle)
                    if await self.idle(redis):
                        return True
                await asyncio.sleep(0.5)
        finally:
            await redis.aclose()
        return False

    async def idle(self, redis: Redis) -> bool:
        """Both queues empty, no `arq:in-progress:*` key, no unfinished outbox row."""
        try:
            for queue in Queue:
                if await redis.zcard(queue_key(queue)):
                    return False
            if await redis.keys(in_progress_key_prefix + "*"):  # a throwaway Redis: KEYS is fine
                return False
        except (RedisError, OSError):
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

    def rows(self, sql: str) -> list[list[str]]:
        out = self.postgres.psql(sql, "chaos")
        return [line.split("|") for line in out.split("\n") if line]

    async def links_that_fail(self, mails: list[Mail]) -> list[str]:
        """Recipients whose first email's link does not verify: what a mail system that keeps
        the first of two copies with one Message-ID would leave the user with."""
        failed = []
        async with httpx.AsyncClient(timeout=30) as client:
            for mail in mails:
                if mail.link is None:
                    failed.append(mail.to)
                    continue
                response = await client.get(mail.link)
                if response.status_code != 200:
                    failed.append(mail.to)
        return failed

    def attempts(self) -> Counter[str]:
        """How many tries of each job the workers' logs show (the highest `job_try`)."""
        tries: Counter[str] = Counter()
        for path in self.root.glob("worker*.log"):
            for line in path.read_text(errors="replace").splitlines():
                if '"job_try"' not in line:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                job, number = record.get("job_id"), record.get("job_try")
                if isinstance(job, str) and isinstance(number, int):
                    tries[job] = max(tries[job], number)
        return tries

    def around(self, start: float, end: float) -> list[str]:
        return [
            f"{at - self.started:.1f}s {kind}: {detail}"
            for at, kind, detail in self.timeline
            if start - AROUND_SECONDS <= at <= end + AROUND_SECONDS
        ]

    async def report(self, elapsed: float, drained: bool) -> dict[str, Any]:
        users = {row[0]: row[1] for row in self.rows("SELECT email, username FROM users")}
        jobs = {
            row[0]: row[1] for row in self.rows("SELECT payload->>'username', job_id FROM outbox")
        }
        by_to: dict[str, list[Mail]] = defaultdict(list)
        for mail in self.inbox.received:
            by_to[mail.to].append(mail)
        # An identical copy (same Message-ID and link) follows a send whose outcome the system
        # could not know: the server hung up after the final dot (decision 090), or it answered
        # 250 and the answer was never recorded: the worker missed it (paused past its
        # timeout), died before its COMMIT, or PostgreSQL lost that transaction, and the worker
        # or the job's re-run sent the same email again (decision 091). Each is counted on its
        # own line; any other second email is a duplicate.
        unanswered = lost = duplicates = 0
        doubled: list[str] = []
        copied_again: list[str] = []
        for to, mails in by_to.items():
            seen: dict[str, Mail] = {}
            for mail in mails:
                first = seen.setdefault(mail.message_id, mail)
                if first is mail:
                    continue
                if mail.link != first.link:
                    duplicates += 1
                    doubled.append(to)
                elif mails[mails.index(mail) - 1].unanswered:
                    unanswered += 1
                else:
                    lost += 1
                    copied_again.append(to)
            duplicates += len(seen) - 1  # distinct messages for one user
            if len(seen) > 1:
                doubled.append(to)
        missing = sorted(set(users) - set(by_to))
        phantom = sorted(set(by_to) - set(users))
        # From the request, for every user with an email: signups whose answer the client
        # never got (a paused replica, a timeout) count too when they committed.
        latencies = sorted(
            by_to[email][0].at - self.requested[email]
            for email in users
            if email in by_to and email in self.requested
        )
        copied = [mails[0] for mails in by_to.values() if len(mails) > 1]
        attempts = self.attempts() if (missing or doubled or phantom or lost) else Counter()

        def explain(email: str) -> dict[str, Any]:
            mails = by_to.get(email, [])
            ids = [MESSAGE_ID.search(mail.message_id) for mail in mails]
            named = [found.group("job") for found in ids if found]
            job = named[0] if named else jobs.get(users.get(email, ""), "")
            start = self.requested.get(email, mails[0].at if mails else self.started)
            end = mails[-1].at if mails else time.monotonic()
            return {
                "email": email,
                "job_id": job,
                "attempts": attempts.get(job, 0),
                "copies": [
                    {
                        "message_id": m.message_id,
                        "at": round(m.at - self.started, 2),
                        "unanswered": m.unanswered,
                    }
                    for m in mails
                ],
                "faults_around": self.around(start, end),
            }

        def pct(p: float) -> float | None:
            if not latencies:
                return None
            return round(latencies[min(int(p * len(latencies)), len(latencies) - 1)], 3)

        return {
            "mode": self.args.mode,
            "drained": drained,
            "duration_seconds": self.args.duration,
            "rate_per_second": self.args.rate,
            "defer_seconds": self.args.defer,
            "seed": self.args.seed,
            "api_replicas": self.args.api_replicas,
            "workers": self.args.workers,
            "sentinel": self.args.sentinel,
            "one_fault_at_a_time": self.args.one_at_a_time,
            "signup_seconds": round(self.signup_seconds, 1),
            "http_timeout_seconds": self.args.timeout,
            "max_in_flight_per_replica": self.args.max_in_flight,
            "faults": dict(sorted(self.faults.items())),
            "faults_total": sum(self.faults.values()),
            "signups_sent": len(self.requested),
            "signups_accepted": len(self.accepted),
            "signups_rejected": sum(self.refused.values()),
            "signups_refused_by_cause": dict(self.refused.most_common()),
            "users_in_database": len(users),
            "emails_delivered": len(self.inbox.received),
            "missing": len(missing),
            "duplicates": duplicates,
            "phantom": len(phantom),
            "unanswered_data": self.inbox.unanswered_kept + self.inbox.unanswered_dropped,
            "unanswered_data_kept_by_server": self.inbox.unanswered_kept,
            "resent_after_unanswered_data": unanswered,
            "resent_after_lost_outcome": lost,
            "first_links_failing": len(await self.links_that_fail(copied)),
            "dead_letters": int(self.postgres.psql("SELECT count(*) FROM dead_tasks", "chaos")),
            "process_restarts": dict(self.restarts),
            "latency_p50_seconds": pct(0.5),
            "latency_p99_seconds": pct(0.99),
            "latency_max_seconds": round(latencies[-1], 3) if latencies else None,
            "wall_seconds": round(elapsed, 1),
            "anomalies": [
                {"kind": kind, **explain(email)}
                for kind, emails in (
                    ("missing", missing),
                    ("duplicate", sorted(set(doubled))),
                    ("phantom", phantom),
                    ("identical_copy_after_lost_outcome", sorted(set(copied_again))),
                )
                for email in emails
            ],
        }

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGCONT)
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
        for server in (self.smtp, self.redis, self.postgres):
            with contextlib.suppress(Exception):  # a start that failed half-way
                server.stop()


def peer_pid(session: Session, pids: list[int]) -> int | None:
    """Which of `pids` holds the client end of this SMTP session's connection."""
    port = session.peer[1] if isinstance(session.peer, tuple) else None
    if port is None:
        return None
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port:
            inode = fields[9]
            break
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == target:
                        return pid
    return None


async def soak(args: argparse.Namespace, keep: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="verimail-chaos-") as tmp:
        root = keep or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        run = Soak(args, root)
        done = asyncio.Event()
        try:
            await asyncio.to_thread(run.start)  # a failed start still stops what it started
            run.started = started = time.monotonic()
            supervisor = asyncio.create_task(run.supervise(done))
            deadline = started + args.duration
            chaos_over = asyncio.Event()
            await asyncio.gather(run.sign_up(chaos_over), run.chaos(deadline, chaos_over))
            run.signup_seconds = time.monotonic() - started
            await asyncio.gather(*run.background)
            drained = await run.drain(args.drain)
            done.set()
            await supervisor
            return await run.report(time.monotonic() - started, drained)
        finally:
            done.set()
            await asyncio.to_thread(run.stop)


def print_table(result: dict[str, Any]) -> None:
    width = max(map(len, result))
    for key, value in result.items():
        if key != "anomalies":
            print(f"{key:<{width}}  {value}")
    for anomaly in result["anomalies"]:
        print(json.dumps(anomaly, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mode", choices=["outbox", "in_transaction"], default="outbox")
    parser.add_argument("--duration", type=float, default=60, help="seconds of signups and faults")
    parser.add_argument("--rate", type=float, default=5, help="signups per second")
    parser.add_argument("--defer", type=float, default=1, help="VERIFY_EMAIL_DEFER_SECONDS")
    parser.add_argument("--api-replicas", type=int, default=1, help="verimail-api processes")
    parser.add_argument("--workers", type=int, default=2, help="verimail-worker processes")
    parser.add_argument(
        "--sentinel", action="store_true", help="a master, a replica and three Sentinels"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--fault-interval",
        type=float,
        nargs=2,
        default=(2.0, 6.0),
        metavar=("MIN", "MAX"),
        help="seconds between faults (uniform)",
    )
    parser.add_argument(
        "--every-kind",
        action="store_true",
        help="run on past --duration (up to 3x) until every kind of fault has struck",
    )
    parser.add_argument(
        "--one-at-a-time",
        action="store_true",
        help="no fault while another lasts (a worker's pause otherwise overlaps later faults)",
    )
    parser.add_argument("--timeout", type=float, default=30, help="a signup's HTTP timeout")
    parser.add_argument(
        "--max-in-flight", type=int, default=20, help="unanswered signups per API replica, at most"
    )
    parser.add_argument("--drain", type=float, default=180, help="longest wait for the queues")
    parser.add_argument("--json", type=Path, help="where to write the result")
    parser.add_argument("--keep", type=Path, help="keep the servers' files and logs here")
    args = parser.parse_args()
    result = asyncio.run(soak(args, args.keep))
    print_table(result)
    path = args.json or RESULTS / f"chaos-{args.mode}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    bad = not result["drained"] or result["missing"] or result["duplicates"] or result["phantom"]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
