"""arq's job lifecycle, claimed and finished in batches (decision 040).

arq pays per job: `start_jobs` claims with WATCH/MULTI (four round trips), `run_job` loads the
job and counts the try (one pipeline), `finish_job` records the outcome (one more), each with
its own task and pipeline machinery in Python. Here one script call claims and loads a whole
batch (`lua/claim_jobs.lua`) and one script call records a whole batch of outcomes
(`lua/finish_jobs.lua`), on arq's keys with arq's rules, so arq clients, `Job.result()` and
bare arq workers on the same queues see nothing new.

`BatchedWorker.run_claimed` is arq 0.28's `Worker.run_job` from the point where the job is
loaded: the same hooks, counters, log lines (on arq's logger), `Retry`, abort, cron and
max-tries rules and result records; what changes is that the job's coroutine runs in the job's
own task (no second task per job), that its outcome is recorded by `FinishBatch`, and that a
failure the function has logged itself (`FAILURE_LOGGED`) gets no second line from arq.

The arq internals relied on are listed in `ARQ_INTERNALS`; `tests/unit/test_arq_internals.py`
fails when an arq release moves them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, cast

from arq import worker as arq_worker
from arq.connections import ArqRedis
from arq.constants import (
    abort_jobs_ss,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.jobs import SerializationError, deserialize_job_raw, serialize_result
from arq.utils import args_to_string, ms_to_datetime, timestamp_ms, to_ms, truncate
from arq.worker import JobExecutionFailed, Retry, RetryJob, Worker, no_result
from redis.exceptions import RedisError

# arq's own logger: its per-job lines keep arq's format and follow its logging settings.
logger = logging.getLogger("arq.worker")
log = logging.getLogger(__name__)

# What this module and weighted.py take from arq beyond its public API; the test of the pin
# checks each one.
ARQ_INTERNALS = (
    "Worker.job_counter",
    "Worker.tasks",
    "Worker.job_tasks",
    "Worker.aborting_tasks",
    "Worker._poll_iteration",
    "Worker._cancel_aborted_jobs",
    "Worker._jobs_started",
    "Worker.in_progress_timeout_s",
    "arq.worker.no_result",
    "arq.worker.logger",
    "arq.jobs.deserialize_job_raw",
    "arq.jobs.serialize_result",
    "arq.worker.keep_cronjob_progress",
    "the run_job, finish_job and start_jobs rules the Lua scripts copy",
)

_queue: ContextVar[str] = ContextVar("verimail_queue")
# Set in a job's ctx by a function that has written the failure's one log line itself (the task
# runner's `process task failed`), so the lifecycle does not add arq's ERROR line with its
# traceback for the same outcome.
FAILURE_LOGGED = "verimail_failure_logged"
RETRY_KEY_TTL_SECONDS = 88400  # arq's
FLUSH_INTERVAL_SECONDS = 0.005
FLUSH_BATCH = 500
FLUSH_RETRY_SECONDS = 0.5
CLOSE_FLUSH_ATTEMPTS = 5


def _lua(name: str) -> str:
    return (files("verimail_worker") / "lua" / name).read_text()


CLAIM_JOBS = _lua("claim_jobs.lua")
FINISH_JOBS = _lua("finish_jobs.lua")


def current_queue_key() -> str:
    """The Redis key of the queue whose job is running in this context."""
    return _queue.get()


@dataclass(frozen=True, slots=True)
class Claimed:
    """A job this worker holds the lease of, loaded: what arq's `run_job` reads first."""

    queue: str
    job_id: str
    score: int
    raw: bytes | None  # None when the job key expired before the job ran
    try_: int
    abort_requested: bool


@dataclass(slots=True)
class _Batch:
    args: list[Any]
    ids: set[str]
    waiters: list[asyncio.Future[None]]
    retries: bool

    def script_args(self) -> list[Any]:
        prefixes = [
            in_progress_key_prefix,
            retry_key_prefix,
            job_key_prefix,
            result_key_prefix,
            abort_jobs_ss,
        ]
        return prefixes + self.args


class FinishBatch:
    """Outcomes of finished attempts, written to Redis in one script call per batch.

    A batch is written `interval` seconds after its first record, or as soon as it holds
    `size` records; one write is in flight at a time, so under load the batches grow on their
    own. A write that fails (Redis away) keeps its records for the next one. `close` writes
    what is left: a graceful stop loses nothing, a crash leaves the leases to expire.
    """

    def __init__(
        self,
        redis: ArqRedis,
        *,
        interval: float = FLUSH_INTERVAL_SECONDS,
        size: int = FLUSH_BATCH,
        on_written: Callable[[bool], None] | None = None,
    ) -> None:
        self._script = redis.register_script(FINISH_JOBS)
        self.interval = interval
        self.size = size
        self._on_written = on_written
        self._args: list[Any] = []
        self._ids: set[str] = set()
        self._retries = False
        self._waiters: list[asyncio.Future[None]] = []
        self._due = asyncio.Event()
        self._lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None

    def add(
        self,
        queue: str,
        job_id: str,
        *,
        finish: bool,
        result: bytes | None = None,
        result_ms: int = 0,
        incr_score: int | None = None,
        keep_ms: int | None = None,
    ) -> None:
        """Record an attempt's outcome: `finish` keeps `result` for `result_ms` (0: for ever)
        and removes the job; otherwise the job stays, `incr_score` ms later. The lease is
        released, or kept `keep_ms` more."""
        self._args += (
            queue,
            job_id,
            1 if finish else 0,
            result or b"",
            result_ms,
            incr_score or 0,
            -1 if keep_ms is None else keep_ms,
        )
        self._ids.add(job_id)
        self._retries |= not finish
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._run())
        self._due.set()

    def pending(self, job_id: str) -> bool:
        """Whether the job's outcome is recorded here but not yet in Redis."""
        return job_id in self._ids

    def written(self) -> asyncio.Future[None]:
        """Resolves once everything recorded so far is in Redis."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._args:
            self._waiters.append(waiter)
        else:
            waiter.set_result(None)
        return waiter

    async def flush(self) -> None:
        """Write every pending record now; RedisError if Redis refuses (they stay pending)."""
        async with self._lock:
            batch = self.take()
            if batch is None:
                return
            try:
                await self._script(args=batch.script_args())
            except BaseException:
                self.put_back(batch)
                raise
        self.written_now(batch)

    def take(self) -> _Batch | None:
        """The pending records, taken out to be written (by `flush`, or alongside a claim)."""
        if not self._args:
            return None
        batch = _Batch(self._args, self._ids, self._waiters, self._retries)
        self._args, self._ids, self._waiters, self._retries = [], set(), [], False
        self._due.clear()
        return batch

    def put_back(self, batch: _Batch) -> None:
        """A taken batch that was not written: pending again, ahead of newer records."""
        self._args = batch.args + self._args
        self._ids |= batch.ids
        self._waiters = batch.waiters + self._waiters
        self._retries |= batch.retries
        self._due.set()

    def written_now(self, batch: _Batch) -> None:
        for waiter in batch.waiters:
            if not waiter.done():
                waiter.set_result(None)
        if self._on_written is not None:
            self._on_written(batch.retries)

    @property
    def sha(self) -> str:
        return str(self._script.sha)

    async def close(self) -> None:
        """Stop the timed writes and write what is left, trying a few times."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        for attempt in range(CLOSE_FLUSH_ATTEMPTS):
            try:
                await self.flush()
            except (RedisError, OSError) as exc:
                log.warning("finish_records_not_written: %s (attempt %d)", exc, attempt + 1)
                await asyncio.sleep(FLUSH_RETRY_SECONDS)
            else:
                return
        log.error("finish_records_lost: %d jobs run again when their leases expire", len(self._ids))

    async def _run(self) -> None:
        while True:
            await self._due.wait()
            if len(self._args) < self.size * 7:
                await asyncio.sleep(self.interval)  # let the batch fill
            try:
                await self.flush()
            except (RedisError, OSError) as exc:
                log.warning("finish_records_not_written: %s", exc)
                await asyncio.sleep(FLUSH_RETRY_SECONDS)


class BatchedWorker(Worker):
    """arq's Worker whose jobs are claimed and loaded, then finished, in batches."""

    _finishes: FinishBatch | None = None
    _claim_script: Any = None
    _scripts_loaded = False

    @property
    def finishes(self) -> FinishBatch:
        if self._finishes is None:
            self._finishes = FinishBatch(self.pool, on_written=self._on_finishes_written)
        return self._finishes

    def _on_finishes_written(self, retries: bool) -> None:
        """Called after each batch of outcomes is written (`retries`: some jobs run again);
        subclasses wake their poll."""

    async def claim(self, picks: list[tuple[str, str]]) -> list[Claimed | None]:
        """Claim and load the (queue, job id) picks in one round trip; None where not taken
        (running elsewhere, gone, or not due). Outcomes waiting to be written go in the same
        round trip, ahead of the claim."""
        if self._claim_script is None:
            self._claim_script = self.pool.register_script(CLAIM_JOBS)
        keys = [queue for queue, _ in picks]
        args: list[Any] = [
            timestamp_ms(),
            int(self.in_progress_timeout_s * 1000),
            in_progress_key_prefix,
            job_key_prefix,
            retry_key_prefix,
            abort_jobs_ss if self.allow_abort_jobs else "",
            *(job_id for _, job_id in picks),
        ]
        batch = self.finishes.take() if self._scripts_loaded else None
        if batch is None:
            reply = cast(list[Any], await self._claim_script(keys=keys, args=args))
            if not self._scripts_loaded:  # the claim script is loaded now: load the other
                await self.pool.script_load(FINISH_JOBS)
                self._scripts_loaded = True
            return self._claimed(picks, reply)
        # EVALSHA by hand: redis-py's pipeline would ask SCRIPT EXISTS first, a round trip more.
        try:
            async with self.pool.pipeline(transaction=False) as pipe:
                pipe.evalsha(self.finishes.sha, 0, *batch.script_args())
                pipe.evalsha(self._claim_script.sha, len(keys), *keys, *args)
                finished, reply = await pipe.execute(raise_on_error=False)
        except BaseException:
            # Maybe written before the connection broke: writing it again changes nothing but
            # a retry's defer, which would count twice (the retry starts one defer later).
            self.finishes.put_back(batch)
            raise
        if isinstance(finished, BaseException):
            self.finishes.put_back(batch)
            self._scripts_loaded = False  # NOSCRIPT after a restart: the next calls load them
        else:
            self.finishes.written_now(batch)
        if isinstance(reply, BaseException):
            self._scripts_loaded = False
            raise reply
        return self._claimed(picks, reply)

    @staticmethod
    def _claimed(picks: list[tuple[str, str]], reply: list[Any]) -> list[Claimed | None]:
        claimed: list[Claimed | None] = []
        for n, (queue, job_id) in enumerate(picks):
            score, raw, try_, aborted = reply[4 * n : 4 * n + 4]
            if score == -1:
                claimed.append(None)
            else:
                claimed.append(Claimed(queue, job_id, int(float(score)), raw, try_, aborted == 1))
        return claimed

    def start_claimed(self, job: Claimed) -> None:
        """Run a claimed job in a task of its own; it holds one of `max_jobs` slots until it ends.

        arq's `sem` is left alone: slots are counted by `job_counter` alone, which the caller
        checks before claiming."""
        self.job_counter += 1
        task = asyncio.create_task(self.run_claimed(job))
        task.add_done_callback(self._job_done)
        self.tasks[job.job_id] = task

    def _job_done(self, _: asyncio.Task[None]) -> None:
        self.job_counter -= 1

    async def run_claimed(self, job: Claimed) -> None:
        """arq's `run_job` for a job claimed and loaded already; outcomes go to the batch."""
        _queue.set(job.queue)
        job_id, score, job_try, queue = job.job_id, job.score, job.try_, job.queue
        start_ms = timestamp_ms()
        function_name, enqueue_time_ms = "<unknown>", 0
        args: tuple[Any, ...] = ()
        kwargs: dict[Any, Any] = {}

        def job_failed(exc: BaseException, ref: str | None = None) -> None:
            self.jobs_failed += 1
            result_data = serialize_result(
                function_name,
                args,
                kwargs,
                job_try,
                enqueue_time_ms,
                False,
                exc,
                start_ms,
                timestamp_ms(),
                ref or f"{job_id}:{function_name}",
                queue,
                job_id=job_id,
                serializer=self.job_serializer,
            )
            self._finish_failed(queue, job_id, result_data)

        if job.raw is None:
            logger.warning("job %s expired", job_id)
            return job_failed(JobExecutionFailed("job expired"))
        try:
            function_name, args, kwargs, enqueue_job_try, enqueue_time_ms = deserialize_job_raw(
                job.raw, deserializer=self.job_deserializer
            )
        except SerializationError as e:
            logger.exception("deserializing job %s failed", job_id)
            return job_failed(e)

        if job.abort_requested:
            t = (timestamp_ms() - enqueue_time_ms) / 1000
            logger.info("%6.2fs ⊘ %s:%s aborted before start", t, job_id, function_name)
            return job_failed(asyncio.CancelledError())

        function = self.functions.get(function_name)
        if function is None:
            logger.warning("job %s, function %r not found", job_id, function_name)
            return job_failed(JobExecutionFailed(f"function {function_name!r} not found"))

        keep_in_progress: float | None = None
        if hasattr(function, "next_run"):  # a cron job
            ref = function_name
            keep_in_progress = vars(arq_worker)["keep_cronjob_progress"]  # read late, as arq does
        else:
            ref = f"{job_id}:{function_name}"

        if enqueue_job_try and enqueue_job_try > job_try:
            job_try = enqueue_job_try
            await self.pool.setex(retry_key_prefix + job_id, RETRY_KEY_TTL_SECONDS, str(job_try))

        max_tries = self.max_tries if function.max_tries is None else function.max_tries
        if job_try > max_tries:
            t = (timestamp_ms() - enqueue_time_ms) / 1000
            logger.warning("%6.2fs ! %s max retries %d exceeded", t, ref, max_tries)
            return job_failed(JobExecutionFailed(f"max {max_tries} retries exceeded"), ref)

        result: Any = no_result
        exc_extra = None
        finish = False
        timeout_s = self.job_timeout_s if function.timeout_s is None else function.timeout_s
        incr_score: int | None = None
        ctx = {
            **self.ctx,
            "job_id": job_id,
            "job_try": job_try,
            "enqueue_time": ms_to_datetime(enqueue_time_ms),
            "score": score,
        }
        if self.on_job_start:
            await self.on_job_start(ctx)

        start_ms = timestamp_ms()
        success = False
        verbose = logger.isEnabledFor(logging.INFO)
        result_str = ""
        try:
            if verbose:
                s = args_to_string(args, kwargs)
                extra = f" try={job_try}" if job_try > 1 else ""
                if (start_ms - score) > 1200:
                    extra += f" delayed={(start_ms - score) / 1000:0.2f}s"
                t = (start_ms - enqueue_time_ms) / 1000
                logger.info("%6.2fs → %s(%s)%s", t, ref, s, extra)
            # The coroutine runs in this task: aborts and shutdown cancel it here.
            self.job_tasks[job_id] = cast(asyncio.Task[Any], asyncio.current_task())
            try:
                async with asyncio.timeout(timeout_s):
                    result = await function.coroutine(ctx, *args, **kwargs)
            except (Exception, asyncio.CancelledError) as e:
                exc_extra = getattr(e, "extra", None)
                if callable(exc_extra):
                    exc_extra = exc_extra()
                raise
            else:
                if verbose and result is not None and self.log_results:
                    result_str = truncate(repr(result))
            finally:
                del self.job_tasks[job_id]
        except (Exception, asyncio.CancelledError) as e:
            finished_ms = timestamp_ms()
            t = (finished_ms - start_ms) / 1000
            if self.retry_jobs and isinstance(e, Retry):
                incr_score = e.defer_score
                logger.info("%6.2fs ↻ %s retrying job in %0.2fs", t, ref, (incr_score or 0) / 1000)
                if e.defer_score:
                    incr_score = e.defer_score + (timestamp_ms() - score)
                self.jobs_retried += 1
            elif job_id in self.aborting_tasks and isinstance(e, asyncio.CancelledError):
                logger.info("%6.2fs ⊘ %s aborted", t, ref)
                result = e
                finish = True
                self.aborting_tasks.remove(job_id)
                self.jobs_failed += 1
            elif self.retry_jobs and isinstance(e, asyncio.CancelledError | RetryJob):
                logger.info("%6.2fs ↻ %s cancelled, will be run again", t, ref)
                self.jobs_retried += 1
            else:
                if not ctx.get(FAILURE_LOGGED):
                    logger.exception(
                        "%6.2fs ! %s failed, %s: %s",
                        t,
                        ref,
                        e.__class__.__name__,
                        e,
                        extra={"extra": exc_extra},
                    )
                result = e
                finish = True
                self.jobs_failed += 1
        else:
            success = True
            finished_ms = timestamp_ms()
            if verbose:
                logger.info("%6.2fs ← %s ● %s", (finished_ms - start_ms) / 1000, ref, result_str)
            finish = True
            self.jobs_complete += 1

        keep_result_forever = (
            self.keep_result_forever
            if function.keep_result_forever is None
            else function.keep_result_forever
        )
        result_timeout_s = (
            self.keep_result_s if function.keep_result_s is None else function.keep_result_s
        )
        result_data = None
        if result is not no_result and (keep_result_forever or result_timeout_s > 0):
            result_data = serialize_result(
                function_name,
                args,
                kwargs,
                job_try,
                enqueue_time_ms,
                success,
                result,
                start_ms,
                finished_ms,
                ref,
                queue,
                job_id=job_id,
                serializer=self.job_serializer,
            )

        if self.on_job_end:
            await self.on_job_end(ctx)

        self.finishes.add(
            queue,
            job_id,
            finish=finish,
            result=result_data,
            result_ms=0 if keep_result_forever else to_ms(result_timeout_s) or 0,
            incr_score=incr_score,
            keep_ms=None if keep_in_progress is None else to_ms(keep_in_progress),
        )
        if self.after_job_end:
            await self.finishes.written()  # arq runs it once the outcome is recorded
            await self.after_job_end(ctx)

    def _finish_failed(self, queue: str, job_id: str, result_data: bytes | None) -> None:
        """arq's `finish_failed_job`, batched."""
        keep = self.keep_result_forever or self.keep_result_s > 0
        self.finishes.add(
            queue,
            job_id,
            finish=True,
            result=result_data if keep else None,
            result_ms=0 if self.keep_result_forever else to_ms(self.keep_result_s) or 0,
        )

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        """arq's `finish_job`, batched (for arq's own `run_job`, if anything calls it)."""
        self.finishes.add(
            self.queue_name,
            job_id,
            finish=finish,
            result=result_data,
            result_ms=0 if keep_result_forever else to_ms(result_timeout_s) or 0,
            incr_score=incr_score,
            keep_ms=None if keep_in_progress is None else to_ms(keep_in_progress),
        )

    async def finish_failed_job(self, job_id: str, result_data: bytes | None) -> None:
        self._finish_failed(self.queue_name, job_id, result_data)

    async def close(self) -> None:
        """arq's `close`, writing the pending outcomes once the jobs are done."""
        if not self._handle_signals:
            self.handle_sig(signal.SIGUSR1)
        if not self._pool:
            return
        await asyncio.gather(*self.tasks.values())
        if self._finishes is not None:
            await self._finishes.close()
        await self.pool.delete(self.health_check_key)
        if self.on_shutdown:
            await self.on_shutdown(self.ctx)
        await self.pool.aclose(close_connection_pool=True)
        self._pool = None
