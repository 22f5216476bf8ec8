"""End to end: verification emails per second for one worker process, against a tight loop doing
the same database and SMTP work without the queue, both in one invocation.

    uv run --group bench python bench/e2e.py --count 2000 --runs 3

Each run pre-creates `count` users in PostgreSQL with their outbox rows (as a signup leaves
them), then sends their verification emails into an SMTP sink, once per side:

- `worker`: the jobs are enqueued through `verimail_shared.outbox` and the real
  `verimail-worker` command runs them as deployed (JSON logs, metrics server, default queues,
  max_jobs and poll delay; VERIFY_EMAIL_DEFER_SECONDS=0).
- `loop`: one process runs the task's own function, `send_verify_email`, for every user, with
  as many coroutines as the worker's max_jobs and the worker's dependencies (engine, SMTP pool).
  The outbox completion mark is queue bookkeeping (the runner's), so the loop has none.
- `smtp`: the sink's check. One process sends the same messages, rendered beforehand, through
  the same SmtpPool with the same concurrency, and nothing else: the rate the sink takes when
  nothing but SMTP is asked of it, which the other sides must stay well below.

The sink is aiosmtpd in a process of its own that only counts and keeps recipients; the rate is
counted there, from the first email to the last. Sides are interleaved run by run against the
same PostgreSQL, Redis and sink. Every run checks that each user got exactly one email, and
for the worker and the loop that every row is marked sent (and for the worker every outbox
row completed). Prints medians, ratios to the worker and where the CPU went (each process's
share of one core while the emails flowed, and its CPU per email); writes
bench/results/e2e.json.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

import psutil
import uvloop
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import func, insert, select, text
from sqlmodel import col

sys.path.insert(0, str(Path(__file__).parent))
from common import (
    Bench,
    interleaved,
    load_average,
    parser,
    print_load,
    print_ratio_table,
    stop,
    write_results,
)

from verimail_shared import db, outbox, queue
from verimail_shared.embedded import free_port
from verimail_shared.jobs import SendVerifyEmailPayload, TaskName
from verimail_shared.logs import configure_logging
from verimail_shared.settings import Settings, get_settings
from verimail_shared.tables import OutboxTask, User, VerifyEmail

SIDES = ["worker", "loop", "smtp"]
RUN_TIMEOUT_SECONDS = 600.0
TARGET_RATIO = 0.9  # the worker's emails/s at least 0.9x the tight loop's


# ---------------------------------------------------------------- the SMTP sink (a process)


@dataclass
class SinkHandler:
    """Counts messages and keeps their recipients; parses nothing, so it stays cheap."""

    count: Synchronized[int]
    recipients: list[str] = field(default_factory=list)
    first: float = 0.0
    last: float = 0.0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        now = time.time()
        if not self.recipients:
            self.first = now
        self.last = now
        self.recipients.extend(envelope.rcpt_tos)
        self.count.value += 1
        return "250 OK"


def serve_sink(port: int, count: Synchronized[int], control: Connection) -> None:
    """The sink's process: SMTP in aiosmtpd's thread, commands from the driver here."""
    handler = SinkHandler(count)
    # The sink's CPU goes to its event loop and socket writes; uvloop makes both cheaper.
    controller = Controller(handler, hostname="127.0.0.1", port=port, loop=uvloop.new_event_loop())
    controller.start()
    control.send("ready")
    while (command := control.recv()) != "stop":
        if command == "reset":
            handler.recipients, handler.first, handler.last = [], 0.0, 0.0
            count.value = 0
            control.send(None)
        elif command == "report":
            control.send((list(handler.recipients), handler.first, handler.last))
    controller.stop()


class Sink:
    """The sink's process, driven through a pipe; `count` is shared memory the driver polls."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.port = free_port()
        self.count: Synchronized[int] = context.Value("q", 0, lock=False)
        self._control, remote = context.Pipe()
        self.process = context.Process(
            target=serve_sink, args=(self.port, self.count, remote), daemon=True
        )

    def start(self) -> None:
        self.process.start()
        if not self._control.poll(60) or self._control.recv() != "ready":
            raise RuntimeError("the SMTP sink did not start")

    def reset(self) -> None:
        self._ask("reset")

    def report(self) -> tuple[list[str], float, float]:
        recipients, first, last = self._ask("report")
        return recipients, first, last

    def _ask(self, command: str) -> Any:
        self._control.send(command)
        if not self._control.poll(60):
            raise RuntimeError(f"the SMTP sink did not answer {command!r}")
        return self._control.recv()

    def stop(self) -> None:
        self._control.send("stop")
        self.process.join(30)


# ---------------------------------------------------------------- the tight loop (a process)


async def tight_loop(concurrency: int) -> None:
    """Every pending outbox row's task, straight from PostgreSQL, `concurrency` at a time."""
    from verimail_worker.tasks import Deps, Job, send_verify_email

    settings = get_settings()
    configure_logging(settings)
    deps = Deps.open(settings)  # as the worker's start-up opens them
    async with db.transaction(deps.sessions) as session:
        rows = (
            await session.execute(
                select(col(OutboxTask.job_id), col(OutboxTask.payload)).where(
                    col(OutboxTask.completed_at).is_(None)
                )
            )
        ).all()
    work = iter(rows)

    async def run() -> None:
        for job_id, payload in work:  # one shared iterator: each row goes to one coroutine
            job = Job(id=job_id, try_=1)
            await send_verify_email(deps, SendVerifyEmailPayload.model_validate(payload), job)

    try:
        await asyncio.gather(*(run() for _ in range(concurrency)))
    finally:
        await deps.close()


async def smtp_only(concurrency: int) -> None:
    """Every user's email, rendered before the first is sent, through the SMTP pool alone."""
    from verimail_worker.letter import VerifyEmailLetter, render
    from verimail_worker.smtp_pool import SmtpPool

    settings = get_settings()
    engine = db.create_engine(settings)
    async with engine.connect() as connection:
        users = (await connection.execute(select(col(User.email), col(User.full_name)))).all()
    await engine.dispose()
    expires = datetime.now(UTC)
    messages = iter(
        [
            render(VerifyEmailLetter(email, name, n, "x" * 43, expires, f"smtp-{n}"), settings)
            for n, (email, name) in enumerate(users)
        ]
    )
    mailer = SmtpPool(settings, size=concurrency)

    async def run() -> None:
        for message in messages:
            await mailer.send(message)

    try:
        await asyncio.gather(*(run() for _ in range(concurrency)))
    finally:
        await mailer.close()


# ---------------------------------------------------------------- the driver


@dataclass
class RunResult:
    side: str
    emails: int
    seconds: float
    emails_per_second: float
    # Each process's CPU while the emails flowed, as a share of one core (1.0 = a full core).
    cpu: dict[str, float]


class E2E:
    def __init__(self, bench: Bench, sink: Sink) -> None:
        self.bench = bench
        self.sink = sink
        self.settings: Settings = bench.settings()

    def env(self) -> dict[str, str]:
        return self.bench.env(
            SMTP_HOST="127.0.0.1",
            SMTP_PORT=str(self.sink.port),
            WORKER_METRICS_PORT=str(free_port()),
            VERIFY_EMAIL_DEFER_SECONDS="0",
        )

    def spawn(self, side: str, run: int) -> subprocess.Popen[bytes]:
        if side == "worker":
            argv = [str(Path(sys.executable).with_name("verimail-worker"))]
        else:
            concurrency = str(self.settings.worker_max_jobs)
            argv = [sys.executable, __file__, side, "--concurrency", concurrency]
        return self.bench.spawn(argv, f"{side}-{run}", self.env())

    async def prepare(self, side: str, run: int, count: int) -> set[str]:
        """Users and their dispatched outbox rows, as signups leave them; jobs on the queue for
        the worker. Returns the users' addresses."""
        engine = db.create_engine(self.settings)
        sessions = db.create_sessionmaker(engine)
        async with engine.begin() as connection:
            await connection.execute(text("TRUNCATE users, verify_emails, outbox, dead_tasks"))
        users = [
            {
                "username": f"bench_{side}_{run}_{n}",
                "hashed_password": "not-a-hash",
                "full_name": f"Bench User {n}",
                "email": f"bench.{side}.{run}.{n}@example.com",
            }
            for n in range(count)
        ]
        rows = [
            outbox.new_task(
                TaskName.SEND_VERIFY_EMAIL,
                SendVerifyEmailPayload(username=user["username"], max_tries=10),
                defer_seconds=0,
            )
            for user in users
        ]
        async with db.transaction(sessions) as session:
            await session.execute(insert(User), users)
            session.add_all(rows)
            await session.flush()
            await outbox.mark_dispatched(session, [row.id for row in rows if row.id is not None])
        await engine.dispose()
        redis = queue.connect(self.settings)
        await redis.flushdb()
        if side == "worker":
            for start in range(0, count, 500):
                await asyncio.gather(*(outbox.enqueue(redis, r) for r in rows[start : start + 500]))
        await redis.aclose()
        return {user["email"] for user in users}

    async def check(self, side: str, expected: set[str], recipients: list[str]) -> None:
        """One email per user; every row marked sent, and for the worker every outbox row
        marked completed (the loop has no queue, the smtp side no database work)."""
        delivered = Counter(recipients)
        if set(delivered) != expected or max(delivered.values()) != 1:
            duplicates = sum(n - 1 for n in delivered.values())
            missing = len(expected - set(delivered))
            raise RuntimeError(f"emails wrong: {duplicates} duplicates, {missing} missing")
        if side == "smtp":
            return
        engine = db.create_engine(self.settings)
        sessions = db.create_sessionmaker(engine)
        deadline = time.monotonic() + 30
        while True:
            async with db.transaction(sessions) as session:
                sent = await session.scalar(
                    select(func.count()).where(col(VerifyEmail.sent_at).is_not(None))
                )
                open_rows = await session.scalar(
                    select(func.count()).where(col(OutboxTask.completed_at).is_(None))
                )
            if sent == len(expected) and (open_rows == 0 or side == "loop"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"database wrong: {sent} sent, {open_rows} outbox rows open")
            await asyncio.sleep(0.05)
        await engine.dispose()

    async def measure(self, side: str, run: int, count: int) -> RunResult:
        expected = await self.prepare(side, run, count)
        self.sink.reset()
        process = self.spawn(side, run)
        try:
            cpu = await self.watch(process, side, count)
            recipients, first, last = self.sink.report()
            await self.check(side, expected, recipients)
        finally:
            stop(process, 60)
        seconds = last - first
        return RunResult(side, len(recipients), seconds, (len(recipients) - 1) / seconds, cpu)

    async def watch(
        self, process: subprocess.Popen[bytes], side: str, count: int
    ) -> dict[str, float]:
        """Until the sink has `count` emails; returns CPU use from the first email on."""
        meters = CpuMeters(self, process.pid)
        deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
        started = False
        while self.sink.count.value < count:
            if not started and self.sink.count.value:
                await meters.sample()
                started = True
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{side} stopped at {self.sink.count.value} of {count} emails")
            await asyncio.sleep(0.005)
        return await meters.usage()


class CpuMeters:
    """CPU seconds of the processes that do the work: the side's own, the sink, PostgreSQL (all
    backends) and Redis (from INFO, as its pid is not ours to look up)."""

    def __init__(self, e2e: E2E, pid: int) -> None:
        self.e2e = e2e
        self.side = psutil.Process(pid)
        self.sink = psutil.Process(e2e.sink.process.pid)
        self.postgres = psutil.Process(e2e.bench.postgres_pid())
        self.before: dict[str, float] = {}
        self.at = 0.0

    async def seconds(self) -> dict[str, float]:
        def used(process: psutil.Process) -> float:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:  # a PostgreSQL backend that ended since children()
                return 0.0
            return float(times.user + times.system)

        backends = [self.postgres, *self.postgres.children()]
        redis = queue.connect(self.e2e.settings)
        info = await redis.info("cpu")
        await redis.aclose()
        return {
            "side": used(self.side),
            "sink": used(self.sink),
            "postgres": sum(used(p) for p in backends),
            "redis": float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
        }

    async def sample(self) -> None:
        self.before, self.at = await self.seconds(), time.monotonic()

    async def usage(self) -> dict[str, float]:
        after, elapsed = await self.seconds(), time.monotonic() - self.at
        return {name: (after[name] - self.before[name]) / elapsed for name in after}


def print_tables(results: dict[str, list[RunResult]]) -> dict[str, float]:
    rates = {side: [r.emails_per_second for r in runs] for side, runs in results.items()}
    medians = print_ratio_table(rates, reference="worker", unit="emails/s")
    names = list(results["worker"][0].cpu)
    print("\nCPU while the emails flowed (medians): share of one core / ms per email")
    print(f"{'side':<8} " + " ".join(f"{name:>15}" for name in names))
    for side, runs in results.items():
        cells = []
        for name in names:
            share = statistics.median(r.cpu[name] for r in runs)
            per_email = statistics.median(1000 * r.cpu[name] / r.emails_per_second for r in runs)
            cells.append(f"{share:>7.2f} /{per_email:>6.2f}")
        print(f"{side:<8} " + " ".join(cells))
    return medians


def main() -> None:
    cli = parser(__doc__, workers=("loop", "smtp"))
    cli.add_argument("--count", type=int, default=2000)
    cli.add_argument("--concurrency", type=int, default=10)
    args = cli.parse_args()
    if args.command in ("loop", "smtp"):
        asyncio.run((tight_loop if args.command == "loop" else smtp_only)(args.concurrency))
        return
    load = load_average()
    sink = Sink()
    with Bench.running(args.redis_url) as bench:
        sink.start()
        try:
            e2e = E2E(bench, sink)
            results: dict[str, list[RunResult]] = {side: [] for side in SIDES}
            for run, side in interleaved(SIDES, args.runs):
                results[side].append(asyncio.run(e2e.measure(side, run, args.count)))
                print(f"run {run + 1} {side}: {results[side][-1].emails_per_second:.0f} emails/s")
        finally:
            sink.stop()
    medians = print_tables(results)
    ratio = medians["worker"] / medians["loop"]
    verdict = "met" if ratio >= TARGET_RATIO else "missed"
    print(f"\nworker ÷ loop = {ratio:.2f} (target >= {TARGET_RATIO}: {verdict})")
    print_load("before", load)
    write_results(
        "e2e",
        {
            "count": args.count,
            "load_average_before": load,
            "medians": medians,
            "ratio_worker_to_loop": ratio,
            "runs": {side: [asdict(r) for r in runs] for side, runs in results.items()},
        },
    )


if __name__ == "__main__":
    main()
