"""An arq Worker that consumes several queues and shares its job slots between them by weight.

arq gives a worker one queue. simplebank's asynq processor takes `critical` and `default`
weighted 10 : 5. This subclass keeps arq's Redis layout and job lifecycle untouched and
changes only which job ids a poll starts: it reads the ready ids of every queue and fills the
free slots by smooth weighted round robin over the queues that have work, so that with all
queues full the started jobs follow the weights, and a lone busy queue gets every slot.

arq's job methods read `self.queue_name` to find the queue a job lives in. Here that name is
a context variable, set while a job is started: the job's task copies the context, so its
whole run (`run_job`, `finish_job`, retries) sees its own queue. See docs/decisions/002.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Iterable, Mapping
from importlib.resources import files
from typing import Any, cast

from arq.connections import create_pool, log_redis_info
from arq.constants import default_queue_name
from arq.utils import poll, timestamp_ms, to_seconds
from arq.worker import Worker

from verimail_worker.lifecycle import BatchedWorker, Claimed, _queue, current_queue_key, logger

__all__ = ["WeightedRoundRobin", "WeightedWorker", "current_queue_key"]

READ_QUEUES = (files("verimail_worker") / "lua" / "read_queues.lua").read_text()


class WeightedRoundRobin:
    """Smooth weighted round robin (as nginx balances upstreams) over whichever queues have work.

    Every pick adds each candidate's weight to its credit and charges the winner the sum, so
    over any run of picks among the same candidates each gets its weight's share, interleaved.
    """

    def __init__(self, weights: Mapping[str, int]) -> None:
        self.weights = dict(weights)
        self._credit = dict.fromkeys(self.weights, 0)

    def pick(self, candidates: Iterable[str]) -> str:
        chosen = ""
        total = 0
        for key in candidates:
            self._credit[key] += self.weights[key]
            total += self.weights[key]
            if not chosen or self._credit[key] > self._credit[chosen]:
                chosen = key
        self._credit[chosen] -= total
        return chosen

    def unpick(self, candidates: Iterable[str], chosen: str) -> None:
        """Take back a pick whose slot went unused."""
        total = 0
        for key in candidates:
            self._credit[key] -= self.weights[key]
            total += self.weights[key]
        self._credit[chosen] += total


class WeightedWorker(BatchedWorker):
    """arq's Worker over several weighted queues, waking when work is due instead of polling.

    `queues` maps queue keys to weights; without it the worker takes arq's `queue_name`, so
    it accepts everything arq's `Worker` does. `poll_delay` becomes the longest wait between
    looks at the queues. In between, the worker sleeps until the earliest deferred job is due,
    enough slots are free for a backlog, a batch of outcomes is written (a retry may be due
    again), or an enqueue is announced on `wakeup_channel` (decision 008).
    """

    def __init__(
        self,
        *args: Any,
        queues: Mapping[str, int] | None = None,
        wakeup_channel: str | None = None,
        **kwargs: Any,
    ) -> None:
        queues = _queues(queues, kwargs)
        self.weights = dict(queues)
        self._turns = WeightedRoundRobin(self.weights)
        self._home_queue = next(iter(self.weights))
        self.wakeup_channel = wakeup_channel
        self.max_wait_s = to_seconds(kwargs.get("poll_delay", 0.5)) or 0.0
        kwargs["poll_delay"] = 0  # arq's loop must not sleep: each iteration waits for work
        super().__init__(*args, queue_name=self._home_queue, **kwargs)
        if self.cron_jobs or self.allow_abort_jobs:
            # arq's cron looks one second ahead at every heartbeat, and aborts are looked for
            # once per poll: look at least as often as arq's default poll.
            self.max_wait_s = min(self.max_wait_s, ARQ_DEFAULT_POLL_SECONDS)
        # The health key lives one second longer than its interval: beat within it.
        self.max_wait_s = min(self.max_wait_s, self.health_check_interval)
        self._wakeup = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._next_due_ms: float | None = None
        self._backlog = False
        self._refill_at = max(1, self.max_jobs // 2)
        self._ready: dict[str, list[str]] = {}
        self._ready_at = 0.0
        self._look_again = False
        self._read_queues: Any = None

    @property
    def queue_name(self) -> str:
        return _queue.get(self._home_queue)

    @queue_name.setter
    def queue_name(self, value: str) -> None:
        self._home_queue = value

    async def main(self) -> None:
        """arq's `main`, with a burst that ends when every queue is empty."""
        if self._pool is None:
            self._pool = await create_pool(
                self.redis_settings,
                job_deserializer=self.job_deserializer,
                job_serializer=self.job_serializer,
                default_queue_name=self._home_queue,
                expires_extra_ms=self.expires_extra_ms,
            )
        logger.info(
            "Starting worker for %d functions: %s", len(self.functions), ", ".join(self.functions)
        )
        await log_redis_info(self.pool, logger.info)
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        async for _ in poll(self.poll_delay_s):
            await self._poll_iteration()
            if self.burst and await self._burst_over():
                return
            await self._wait_for_work()

    async def _burst_over(self) -> bool:
        """Whether a burst is over: `max_burst_jobs` started, or every queue empty. Once it
        is, wait for the running jobs and write their outcomes."""
        if not 0 <= self.max_burst_jobs <= self._jobs_started():
            await self.finishes.flush()  # a finished job stays queued until its record is in
            async with self.pool.pipeline(transaction=False) as pipe:
                for key in self.weights:
                    pipe.zcard(key)
                if any(await pipe.execute()):
                    return False
        await asyncio.gather(*self.tasks.values())
        await self.finishes.flush()
        return True

    async def _poll_iteration(self) -> None:
        if self.wakeup_channel and self._listener is None:
            self._listener = asyncio.create_task(self._listen(self.wakeup_channel))
        self._wakeup.clear()
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                task.result()  # surface errors in a job's run, as arq does
        if self.allow_pick_jobs and self._free_slots() > 0:
            await self._start_weighted()
        if self.allow_abort_jobs:
            await self._cancel_aborted_jobs()
        await self.heart_beat()

    def _free_slots(self) -> int:
        free = self.max_jobs - self.job_counter
        if self.burst and self.max_burst_jobs >= 0:
            free = min(free, self.max_burst_jobs - self._jobs_started())
        return free

    async def _start_weighted(self) -> None:
        ready = self._ready if self._ready_is_fresh() else await self._read_ready()
        while ready and self.allow_pick_jobs and (free := self._free_slots()) > 0:
            picks: list[tuple[tuple[str, ...], str, str]] = []
            while ready and len(picks) < free:
                candidates = tuple(ready)
                key = self._turns.pick(candidates)
                job_id = ready[key].pop()
                if not ready[key]:
                    del ready[key]
                if job_id in self.tasks or self.finishes.pending(job_id):
                    self._turns.unpick(candidates, key)  # taken here since it was read
                    continue
                picks.append((candidates, key, job_id))
            if not picks:
                break
            claimed = await self.claim([(key, job_id) for _, key, job_id in picks])
            for (candidates, key, _), job in zip(picks, claimed, strict=True):
                if job is None:
                    # Running elsewhere or gone: the slot is still free, so the turn is not spent.
                    self._turns.unpick(candidates, key)
                else:
                    self.start_claimed(job)
        self._backlog = bool(ready) or self._backlog

    def _ready_is_fresh(self) -> bool:
        """Whether the ready ids left from the last read may be claimed without reading again:
        under load, a read per batch of slots would double the round trips. Not after an
        announced enqueue or a written retry (a queue may have new work), nor once stale."""
        return (
            bool(self._ready)
            and not self._look_again
            and time.monotonic() - self._ready_at < READY_REUSE_SECONDS
        )

    async def _read_ready(self) -> dict[str, list[str]]:
        """Read the head of every queue: the due ids not running here, oldest last (popped
        first), per queue; note the next due time and whether more work waits unread."""
        if self._read_queues is None:
            self._read_queues = self.pool.register_script(READ_QUEUES)  # EVALSHA from now on
        self._look_again = False
        self._next_due_ms = None
        self._backlog = False
        keys = list(self.weights)
        limit = self.queue_read_limit
        heads = cast(list[list[bytes]], await self._read_queues(keys=keys, args=[limit]))
        now = timestamp_ms()
        finishing = self.finishes.pending
        ready: dict[str, list[str]] = {}
        for key, head in zip(keys, heads, strict=True):
            due: list[str] = []
            for i in range(0, len(head), 2):
                score = float(head[i + 1])
                if score > now:  # lowest scores come first: the rest are later still
                    if self._next_due_ms is None or score < self._next_due_ms:
                        self._next_due_ms = score
                    break
                job_id = head[i].decode()
                # Running here, or finished with its record not yet written: not ours to take.
                if job_id not in self.tasks and not finishing(job_id):
                    due.append(job_id)
            else:
                self._backlog |= len(head) == 2 * limit  # all due, and maybe more behind
            if due:
                due.reverse()
                ready[key] = due
        self._ready, self._ready_at = ready, time.monotonic()
        return ready

    def start_claimed(self, job: Claimed) -> None:
        super().start_claimed(job)
        self.tasks[job.job_id].add_done_callback(self._on_job_done)

    def _on_job_done(self, _: asyncio.Task[None]) -> None:
        # With work waiting, look again once enough slots are free to take a batch of it;
        # when stopping, at once, so that the finished task leaves `tasks` (arq's shutdown
        # waits for `tasks` to empty).
        if not self.allow_pick_jobs or (
            self._backlog and self.max_jobs - self.job_counter >= self._refill_at
        ):
            self._wakeup.set()

    def _on_finishes_written(self, retries: bool) -> None:
        if retries:  # retried jobs are back in their queues, maybe due now
            self._look_again = True
            self._wakeup.set()
        elif self._backlog and self.job_counter < self.max_jobs:
            self._wakeup.set()

    async def _wait_for_work(self) -> None:
        """Until a deferred job is due, slots are free for a backlog, outcomes are written, an
        enqueue is announced, or the longest wait is over."""
        if self._wakeup.is_set():
            return
        timeout = self.max_wait_s
        if self._next_due_ms is not None and self.job_counter < self.max_jobs:
            timeout = min(timeout, max((self._next_due_ms - timestamp_ms()) / 1000, 0))
        if timeout > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()
                    return
        self._look_again = True  # a due time came, or the longest wait is over: read again

    async def _listen(self, channel: str) -> None:
        """Set the wakeup event on every announced enqueue; reconnect after a lost connection."""
        while True:
            try:
                async with self.pool.pubsub() as pubsub:
                    await pubsub.subscribe(channel)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._look_again = True
                            self._wakeup.set()
            except asyncio.CancelledError:
                raise
            except Exception:  # Redis gone: the polls notice too; listen again shortly
                await asyncio.sleep(1)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await super().close()


ARQ_DEFAULT_POLL_SECONDS = 0.5
READY_REUSE_SECONDS = 0.1

# arq's Worker signature plus ours, so that arq's `create_worker` and CLI, which pick the
# settings a Worker accepts from its signature, pass every one of them on.
WeightedWorker.__signature__ = inspect.signature(Worker).replace(  # type: ignore[attr-defined]
    parameters=[
        *inspect.signature(Worker).parameters.values(),
        inspect.Parameter("queues", inspect.Parameter.KEYWORD_ONLY, default=None),
        inspect.Parameter("wakeup_channel", inspect.Parameter.KEYWORD_ONLY, default=None),
    ]
)


def _queues(queues: Mapping[str, int] | None, kwargs: dict[str, Any]) -> dict[str, int]:
    """The queues and weights, from `queues` or, as arq takes them, from `queue_name`."""
    if queues is None:
        name = kwargs.pop("queue_name", default_queue_name)
        if name is None:
            pool = kwargs.get("redis_pool")
            if pool is None:
                raise ValueError("If queue_name is absent, redis_pool must be present.")
            name = pool.default_queue_name
        return {name: 1}
    if "queue_name" in kwargs:
        raise ValueError("give the worker `queues` or arq's `queue_name`, not both")
    if not queues:
        raise ValueError("a worker needs at least one queue")
    if any(not isinstance(w, int) or w < 1 for w in queues.values()):
        raise ValueError(f"queue weights must be whole numbers of at least 1: {dict(queues)}")
    return dict(queues)
