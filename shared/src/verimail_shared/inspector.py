"""What an operator sees and does: queues and their jobs, dead letters, workers, and the whole
story of one signup's verification emails (asynq's Inspector, for our Redis layout and tables).

The web console (in `verimail-api`) and `verimail-admin` both sit on this module, so a page and
a command say the same thing. Every read is bounded: pages of at most `MAX_PAGE_SIZE` rows,
Redis ranges by score with LIMIT, SQL with LIMIT on indexed columns. Actions are idempotent:
doing one twice does it once and says so the second time.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import structlog
from arq.connections import ArqRedis
from arq.constants import (
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.utils import timestamp_ms
from sqlalchemy import Select, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from verimail_shared import outbox, queue
from verimail_shared.db import transaction
from verimail_shared.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from verimail_shared.jobs import TASK_QUEUES, WAKEUP_CHANNEL, Queue, TaskName, queue_key
from verimail_shared.messages import verify_message_id
from verimail_shared.tables import DeadTask, OutboxTask, User, VerifyEmail, loaded
from verimail_shared.workers import HourCount, WorkerRecord, hourly, live_workers

log = structlog.get_logger(__name__)
PAGE_SIZE = 25
MAX_PAGE_SIZE = 200
MAX_FILTER_LENGTH = 200
REQUEUE_BATCH = 200
LOOKUP_LIMIT = 20  # verification emails shown per signup, newest first
JOB_STATES = ("ready", "deferred", "in_progress")
DEAD_STATUSES = ("waiting", "requeued", "all")
MASK = "********"
# Payload fields whose values an operator never needs to read.
SECRET_FIELD = re.compile(r"pass|secret|token|code|hash|key|auth|cookie|credential|otp", re.I)

T = TypeVar("T")


def mask_secrets(value: Any) -> Any:
    """A copy of `value` with every field whose name suggests a secret replaced by a mask."""
    if isinstance(value, dict):
        return {
            k: MASK if SECRET_FIELD.search(str(k)) else mask_secrets(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    return value


def page_number(raw: str | None) -> int:
    """`?page=`: 1 when absent, else a whole number from 1 on."""
    if raw is None or raw == "":
        return 1
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= 10**9:
        raise InvalidArgument([FieldViolation("page", "must be a whole number from 1")])
    return int(raw)


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    number: int
    size: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.size))

    def check(self) -> Page[T]:
        """A page past the end is bad input, named as such."""
        if self.number > self.pages:
            raise InvalidArgument(
                [FieldViolation("page", f"must be from 1 to {self.pages} (there are {self.total})")]
            )
        return self


@dataclass(frozen=True)
class QueueRow:
    name: str
    ready: int
    deferred: int
    in_progress: int
    dead: int


@dataclass(frozen=True)
class JobView:
    id: str
    queue: str
    state: str
    task: str
    due: datetime | None
    enqueued: datetime | None
    tries: int
    max_tries: int | None
    payload: Any


@dataclass(frozen=True)
class DeadFilter:
    task: str = ""
    queue: str = ""
    error: str = ""
    status: str = "waiting"

    @classmethod
    def parse(cls, params: dict[str, str], queues: list[str]) -> DeadFilter:
        """From query parameters; anything malformed is an InvalidArgument naming the field."""
        task = params.get("task", "").strip()
        queue_name = params.get("queue", "").strip()
        error = params.get("error", "").strip()
        status = params.get("status", "waiting").strip() or "waiting"
        bad = []
        if task and task not in {t.value for t in TaskName}:
            bad.append(FieldViolation("task", f"must be one of {', '.join(TaskName)}"))
        if queue_name and queue_name not in queues:
            bad.append(FieldViolation("queue", f"must be one of {', '.join(queues)}"))
        if len(error) > MAX_FILTER_LENGTH or any(ord(c) < 32 for c in error):
            bad.append(
                FieldViolation("error", f"must be at most {MAX_FILTER_LENGTH} printable characters")
            )
        if status not in DEAD_STATUSES:
            bad.append(FieldViolation("status", f"must be one of {', '.join(DEAD_STATUSES)}"))
        if bad:
            raise InvalidArgument(bad)
        return cls(task, queue_name, error, status)

    def params(self) -> dict[str, str]:
        values = {"task": self.task, "queue": self.queue, "error": self.error}
        return {k: v for k, v in values.items() if v} | {"status": self.status}

    def apply(self, statement: Select[Any]) -> Select[Any]:
        if self.task:
            statement = statement.where(col(DeadTask.task) == self.task)
        if self.queue:
            statement = statement.where(col(DeadTask.queue) == self.queue)
        if self.error:
            escaped = self.error.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            statement = statement.where(col(DeadTask.last_error).ilike(f"%{escaped}%"))
        if self.status == "waiting":
            statement = statement.where(col(DeadTask.requeued_at).is_(None))
        elif self.status == "requeued":
            statement = statement.where(col(DeadTask.requeued_at).is_not(None))
        return statement


@dataclass(frozen=True)
class Outcome:
    """What an action did, in words for the operator, and whether it changed anything."""

    message: str
    changed: bool = True


@dataclass(frozen=True)
class JobState:
    """Where a job is in Redis now."""

    state: str  # ready, deferred, in_progress, finished, absent
    tries: int
    due: datetime | None = None


@dataclass(frozen=True)
class EmailStory:
    """One verification email from its outbox row to the use of its code."""

    job_id: str
    outbox: OutboxTask | None
    email: VerifyEmail | None
    job: JobState
    message_id: str | None
    dead: list[DeadTask] = field(default_factory=list)


@dataclass(frozen=True)
class Lookup:
    user: User
    stories: list[EmailStory]


# Run a deferred job now: only if it is still in its queue and no worker runs it.
# KEYS: queue, in-progress key; ARGV: job id, now (ms). 1 moved, 0 due already, -1 gone,
# -2 running.
RUN_NOW = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score then return -1 end
if redis.call('EXISTS', KEYS[2]) == 1 then return -2 end
if tonumber(score) <= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[1])
return 1
"""
# Delete a queued job that no worker runs. KEYS: queue, in-progress, job, retry;
# ARGV: job id. 1 deleted, -1 gone, -2 running.
DELETE_JOB = """
if redis.call('EXISTS', KEYS[2]) == 1 then return -2 end
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return -1 end
redis.call('DEL', KEYS[3], KEYS[4])
return 1
"""


class Inspector:
    def __init__(
        self,
        redis: ArqRedis,
        sessions: async_sessionmaker[AsyncSession],
        queues: list[str],
        email_sender: str,
    ) -> None:
        self.redis = redis
        self.sessions = sessions
        self.queue_names = list(dict.fromkeys([*(q.value for q in Queue), *queues]))
        self.email_sender = email_sender

    # Queues and jobs

    async def queues(self) -> list[QueueRow]:
        counts = await queue.queue_counts(self.redis, self.queue_names)
        async with self.sessions() as session:
            rows = await session.execute(
                select(col(DeadTask.queue), func.count())
                .where(col(DeadTask.requeued_at).is_(None))
                .group_by(col(DeadTask.queue))
            )
            dead = {name: count for name, count in rows}
        return [
            QueueRow(
                name,
                counts[name].ready,
                counts[name].deferred,
                counts[name].in_progress,
                dead.get(name, 0),
            )
            for name in self.queue_names
        ]

    def check_queue(self, name: str) -> str:
        if name not in self.queue_names:
            raise NotFound(f"no queue named {name!r}; queues: {', '.join(self.queue_names)}")
        return name

    async def jobs(
        self, queue_name: str, state: str, number: int, size: int = PAGE_SIZE
    ) -> Page[JobView]:
        """One page of a queue's jobs in `state`: ready (due, waiting), deferred (due later,
        soonest first) or in_progress. Workers take jobs oldest first, so running jobs are the
        head of the due ones; ready pages skip them."""
        self.check_queue(queue_name)
        if state not in JOB_STATES:
            raise InvalidArgument(
                [FieldViolation("state", f"must be one of {', '.join(JOB_STATES)}")]
            )
        size = min(size, MAX_PAGE_SIZE)
        key, now = queue_key(queue_name), timestamp_ms()
        counts = (await queue.queue_counts(self.redis, [queue_name]))[queue_name]
        offset = (number - 1) * size
        if state == "deferred":
            total = counts.deferred
            ids = await self.redis.zrangebyscore(key, f"({now}", "+inf", start=offset, num=size)
        elif state == "ready":
            total = counts.ready
            ids = await self.redis.zrangebyscore(
                key, "-inf", now, start=offset + counts.in_progress, num=size
            )
        else:
            total = counts.in_progress
            head = await self.redis.zrangebyscore(
                key, "-inf", now, start=0, num=queue.RUNNING_LOOKUP_LIMIT
            )
            running = await self._running(head)
            ids = [i for i, r in zip(head, running, strict=True) if r][offset : offset + size]
        page_ids = [i.decode() for i in ids]
        views = await self._views(queue_name, page_ids, now)
        if state == "ready":  # a job may have started since it was counted
            views = [v for v in views if v.state == "ready"]
        return Page(views, number, size, total).check()

    async def _running(self, ids: list[bytes]) -> list[bool]:
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.exists(in_progress_key_prefix + job_id.decode())
            return [bool(n) for n in await pipe.execute()]

    async def _views(self, queue_name: str, ids: list[str], now: int) -> list[JobView]:
        if not ids:
            return []
        key = queue_key(queue_name)
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.get(job_key_prefix + job_id)
                pipe.get(retry_key_prefix + job_id)
                pipe.exists(in_progress_key_prefix + job_id)
                pipe.zscore(key, job_id)
            raw = await pipe.execute()
        views = []
        for index, job_id in enumerate(ids):
            data, retry, running, score = raw[index * 4 : index * 4 + 4]
            views.append(_job_view(job_id, queue_name, data, retry, running, score, now))
        return views

    async def job(self, queue_name: str, job_id: str) -> JobView:
        self.check_queue(queue_name)
        views = await self._views(queue_name, [job_id], timestamp_ms())
        if not views or views[0].state == "absent":
            raise NotFound(f"job {job_id} is not in queue {queue_name}")
        return views[0]

    async def run_now(self, queue_name: str, job_id: str) -> Outcome:
        """Make a deferred job due now and wake the workers; a due job is left as it is."""
        self.check_queue(queue_name)
        script = self.redis.register_script(RUN_NOW)
        keys = [queue_key(queue_name), in_progress_key_prefix + job_id]
        result = await script(keys=keys, args=[job_id, timestamp_ms()])
        if result == -1:
            raise NotFound(f"job {job_id} is not in queue {queue_name} (finished or deleted?)")
        if result == -2:
            return Outcome(f"job {job_id} is running already", changed=False)
        if result == 0:
            return Outcome(f"job {job_id} was due already", changed=False)
        await self.redis.publish(WAKEUP_CHANNEL, queue_name)
        return Outcome(f"job {job_id} is due now")

    async def delete_job(self, queue_name: str, job_id: str) -> Outcome:
        """Take a job off its queue for good; its outbox row is marked finished, so that the
        reconciler does not put it back."""
        self.check_queue(queue_name)
        script = self.redis.register_script(DELETE_JOB)
        keys = [
            queue_key(queue_name),
            in_progress_key_prefix + job_id,
            job_key_prefix + job_id,
            retry_key_prefix + job_id,
        ]
        result = await script(keys=keys, args=[job_id])
        if result == -2:
            raise FailedPrecondition(f"job {job_id} is running; it cannot be deleted now")
        if result == -1:
            return Outcome(f"job {job_id} is not in queue {queue_name} any more", changed=False)
        async with transaction(self.sessions) as session:
            await outbox.mark_completed(session, [job_id])
        return Outcome(f"job {job_id} deleted")

    # Dead letters

    async def dead_letters(
        self, where: DeadFilter, number: int, size: int = PAGE_SIZE
    ) -> Page[DeadTask]:
        size = min(size, MAX_PAGE_SIZE)
        async with self.sessions() as session:
            total = await session.scalar(where.apply(select(func.count()).select_from(DeadTask)))
            rows = await session.scalars(
                where.apply(select(DeadTask))
                .order_by(col(DeadTask.id).desc())
                .offset((number - 1) * size)
                .limit(size)
            )
            return Page(list(rows.all()), number, size, int(total or 0)).check()

    async def dead_letter(self, dead_id: int) -> DeadTask:
        if not 0 < dead_id < 2**63:  # beyond bigint: no such row, and no query to make
            raise NotFound(f"dead letter {dead_id} not found")
        async with self.sessions() as session:
            row = await session.get(DeadTask, dead_id)
        if row is None:
            raise NotFound(f"dead letter {dead_id} not found")
        return row

    async def requeue_dead(self, dead_id: int) -> Outcome:
        """Enqueue a dead letter again under its job id with fresh tries; once."""
        if not 0 < dead_id < 2**63:
            raise NotFound(f"dead letter {dead_id} not found")
        async with transaction(self.sessions) as session:
            row = await session.get(DeadTask, dead_id, with_for_update=True)
            if row is None:
                raise NotFound(f"dead letter {dead_id} not found")
            if row.requeued_at is not None:
                return Outcome(f"dead letter {dead_id} was re-queued already", changed=False)
            if not await self._requeue(session, row):
                raise FailedPrecondition(f"job {row.job_id} is queued or running already")
        return Outcome(f"dead letter {dead_id} re-queued as job {row.job_id}")

    async def requeue_matching(self, where: DeadFilter) -> Outcome:
        """Re-queue every dead letter matching `where` that waits, in batches of rows locked
        with SKIP LOCKED (two operators doing this at once re-queue each letter once)."""
        waiting = DeadFilter(where.task, where.queue, where.error, "waiting")
        done = skipped = 0
        last_id = 2**63 - 1
        while True:
            async with transaction(self.sessions) as session:
                rows = (
                    await session.scalars(
                        waiting.apply(select(DeadTask))
                        .where(col(DeadTask.id) <= last_id)
                        .order_by(col(DeadTask.id).desc())
                        .limit(REQUEUE_BATCH)
                        .with_for_update(skip_locked=True)
                    )
                ).all()
                for row in rows:
                    if await self._requeue(session, row):
                        done += 1
                    else:
                        skipped += 1
            if len(rows) < REQUEUE_BATCH:
                break
            last_id = loaded(rows[-1].id) - 1
        message = f"{done} dead letter{'s' if done != 1 else ''} re-queued"
        if skipped:
            message += f"; {skipped} skipped, their jobs are queued or running already"
        return Outcome(message, changed=done > 0)

    async def _requeue(self, session: AsyncSession, row: DeadTask) -> bool:
        fresh = await queue.requeue(self.redis, TaskName(row.task), row.payload, job_id=row.job_id)
        if not fresh:
            return False
        row.requeued_at = datetime.now(UTC)
        session.add(row)
        # Unfinished again: the outbox reconciler watches it until it completes.
        await session.execute(
            update(OutboxTask)
            .where(col(OutboxTask.job_id) == row.job_id)
            .values(completed_at=None, dispatched_at=row.requeued_at)
        )
        return True

    async def delete_dead(self, ids: list[int]) -> Outcome:
        wanted = [i for i in ids if 0 < i < 2**63]
        async with transaction(self.sessions) as session:
            result = await session.execute(
                delete(DeadTask).where(col(DeadTask.id).in_(wanted)).returning(col(DeadTask.id))
            )
            deleted = sorted(i for i in result.scalars().all() if i is not None)
        missing = sorted(set(ids) - set(deleted))
        if not deleted:
            if len(ids) == 1:
                raise NotFound(f"dead letter {ids[0]} not found (deleted already?)")
            raise NotFound("none of these dead letters exists (deleted already?)")
        message = f"deleted dead letter{'s' if len(deleted) > 1 else ''} " + ", ".join(
            map(str, deleted)
        )
        if missing:
            message += "; not found: " + ", ".join(map(str, missing))
        return Outcome(message)

    # Workers, outbox, signups

    async def workers(self) -> list[WorkerRecord]:
        return await live_workers(self.redis)

    async def hourly(self) -> list[HourCount]:
        return await hourly(self.redis)

    async def outbox_backlog(self) -> tuple[int, datetime | None]:
        """Rows not dispatched yet, and when the oldest was written (a partial index)."""
        async with self.sessions() as session:
            count, oldest = (
                await session.execute(
                    select(func.count(), func.min(col(OutboxTask.created_at))).where(
                        col(OutboxTask.dispatched_at).is_(None)
                    )
                )
            ).one()
        return int(count), oldest

    async def lookup(self, query: str) -> Lookup:
        """A user by username or email (any case), with its verification emails' stories."""
        query = query.strip()
        if not query or len(query) > MAX_FILTER_LENGTH:
            raise InvalidArgument(
                [FieldViolation("q", f"must be an email or a username, 1 to {MAX_FILTER_LENGTH}")]
            )
        async with self.sessions() as session:
            user = await session.scalar(
                select(User)
                .where(or_(col(User.username) == query, func.lower(User.email) == query.lower()))
                .limit(1)
            )
            if user is None:
                raise NotFound(f"no user with username or email {query!r}")
            emails = (
                await session.scalars(
                    select(VerifyEmail)
                    .where(col(VerifyEmail.username) == user.username)
                    .order_by(col(VerifyEmail.id).desc())
                    .limit(LOOKUP_LIMIT)
                )
            ).all()
            rows = (
                await session.scalars(
                    select(OutboxTask)
                    .where(OutboxTask.payload["username"].astext == user.username)
                    .order_by(col(OutboxTask.id).desc())
                    .limit(LOOKUP_LIMIT)
                )
            ).all()
            by_job = {e.job_id: e for e in emails if e.job_id}
            outboxes = {r.job_id: r for r in rows}
            job_ids = list(dict.fromkeys([*outboxes, *by_job]))
            dead = (
                await session.scalars(
                    select(DeadTask)
                    .where(col(DeadTask.job_id).in_(job_ids))
                    .order_by(col(DeadTask.id))
                )
            ).all()
        states = await self._job_states(job_ids, outboxes)
        stories = [
            EmailStory(
                job_id=job_id,
                outbox=outboxes.get(job_id),
                email=by_job.get(job_id),
                job=states[job_id],
                message_id=verify_message_id(job_id, self.email_sender)
                if job_id in by_job and by_job[job_id].sent_at
                else None,
                dead=[d for d in dead if d.job_id == job_id],
            )
            for job_id in job_ids
        ]
        stories.sort(key=_story_time, reverse=True)
        return Lookup(user, stories)

    async def _job_states(
        self, job_ids: list[str], outboxes: dict[str, OutboxTask]
    ) -> dict[str, JobState]:
        if not job_ids:
            return {}
        now = timestamp_ms()
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                row = outboxes.get(job_id)
                task = TaskName(row.task) if row else TaskName.SEND_VERIFY_EMAIL
                pipe.zscore(queue_key(TASK_QUEUES[task]), job_id)
                pipe.exists(in_progress_key_prefix + job_id)
                pipe.get(retry_key_prefix + job_id)
                pipe.exists(result_key_prefix + job_id)
            raw = await pipe.execute()
        result = {}
        for index, job_id in enumerate(job_ids):
            score, running, retry, finished = raw[index * 4 : index * 4 + 4]
            tries = int(retry or 0)
            due = datetime.fromtimestamp(score / 1000, UTC) if score is not None else None
            if running:
                state = "in_progress"
            elif score is not None:
                state = "ready" if score <= now else "deferred"
            elif finished:
                state = "finished"
            else:
                state = "absent"
            result[job_id] = JobState(state, tries, due)
        return result


def _story_time(story: EmailStory) -> datetime:
    for source in (story.outbox, story.email):
        if source is not None and source.created_at is not None:
            return source.created_at
    return datetime.min.replace(tzinfo=UTC)


def _job_view(
    job_id: str,
    queue_name: str,
    data: bytes | None,
    retry: bytes | None,
    running: int,
    score: float | None,
    now: int,
) -> JobView:
    if score is None:
        state = "absent"
    elif running:
        state = "in_progress"
    else:
        state = "ready" if score <= now else "deferred"
    task, payload, enqueued, max_tries = "?", None, None, None
    if data is not None:
        try:
            decoded = json.loads(data)
            task = str(decoded.get("f", "?"))
            args = decoded.get("a") or []
            payload = args[0] if len(args) == 1 else {"args": args, "kwargs": decoded.get("k")}
            enqueued = datetime.fromtimestamp(decoded["et"] / 1000, UTC)
            if isinstance(payload, dict) and isinstance(payload.get("max_tries"), int):
                max_tries = payload["max_tries"]
        except (ValueError, KeyError, TypeError):
            payload = {"unreadable": True}
    return JobView(
        id=job_id,
        queue=queue_name,
        state=state,
        task=task,
        due=datetime.fromtimestamp(score / 1000, UTC) if score is not None else None,
        enqueued=enqueued,
        tries=int(retry or 0),
        max_tries=max_tries,
        payload=mask_secrets(payload),
    )
