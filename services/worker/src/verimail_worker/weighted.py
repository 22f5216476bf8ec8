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
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from typing import Any, cast

from arq.utils import timestamp_ms
from arq.worker import Worker
from redis.commands.core import AsyncScript

_queue: ContextVar[str] = ContextVar("verimail_queue")


def current_queue_key() -> str:
    """The Redis key of the queue whose job is running in this context."""
    return _queue.get()


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


# One round trip for every queue: the first entries of each sorted set, lowest score first.
READ_QUEUES = """
local result = {}
for i, key in ipairs(KEYS) do
  result[i] = redis.call('ZRANGE', key, 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
end
return result
"""


class WeightedWorker(Worker):
    """arq's Worker over several weighted queues, waking when work is due instead of polling.

    `poll_delay` becomes the longest wait between looks at the queues. In between, the worker
    sleeps until the earliest deferred job is due, a running job finishes, or an enqueue is
    announced on `wakeup_channel` (decision 008).
    """

    def __init__(
        self,
        *args: Any,
        queues: Mapping[str, int],
        wakeup_channel: str | None = None,
        **kwargs: Any,
    ) -> None:
        if not queues:
            raise ValueError("a worker needs at least one queue")
        self.weights = dict(queues)
        self._turns = WeightedRoundRobin(self.weights)
        self._home_queue = next(iter(self.weights))
        self.wakeup_channel = wakeup_channel
        self.max_wait_s = float(kwargs.get("poll_delay", 0.5))
        kwargs["poll_delay"] = 0  # arq's loop must not sleep: each iteration waits for work
        super().__init__(*args, queue_name=self._home_queue, **kwargs)
        self._wakeup = asyncio.Event()
        self._listener: asyncio.Task[None] | None = None
        self._next_due_ms: float | None = None
        self._read_queues: AsyncScript | None = None

    @property
    def queue_name(self) -> str:
        return _queue.get(self._home_queue)

    @queue_name.setter
    def queue_name(self, value: str) -> None:
        self._home_queue = value

    async def _poll_iteration(self) -> None:
        if self.wakeup_channel and self._listener is None:
            self._listener = asyncio.create_task(self._listen(self.wakeup_channel))
        self._wakeup.clear()
        self._next_due_ms = None
        if self.allow_pick_jobs and self.job_counter < self.max_jobs:
            await self._start_weighted()
        if self.allow_abort_jobs:
            await self._cancel_aborted_jobs()
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                task.result()  # surface errors in run_job, as arq does
        await self.heart_beat()
        await self._wait_for_work()

    async def _start_weighted(self) -> None:
        now = timestamp_ms()
        keys = list(self.weights)
        if self._read_queues is None:
            self._read_queues = self.pool.register_script(READ_QUEUES)  # EVALSHA from now on
        heads = cast(
            list[list[bytes]], await self._read_queues(keys=keys, args=[self.queue_read_limit])
        )
        # Running jobs stay at the head of their queue until they finish: skip this worker's
        # own without asking Redis.
        mine = {job_id.encode() for job_id, task in self.tasks.items() if not task.done()}
        ready: dict[str, list[bytes]] = {}
        for key, head in zip(keys, heads, strict=True):
            pairs = list(zip(head[::2], map(float, head[1::2]), strict=True))
            due = [job_id for job_id, score in pairs if score <= now and job_id not in mine]
            if due:
                ready[key] = due
            later = next((score for _, score in pairs if score > now), None)
            if later is not None and (self._next_due_ms is None or later < self._next_due_ms):
                self._next_due_ms = later
        while ready and self.job_counter < self.max_jobs:
            candidates = tuple(ready)
            key = self._turns.pick(candidates)
            job_id = ready[key].pop(0)
            # Not job_counter: jobs that finish during start_jobs' round trips lower it too.
            before = self.tasks.get(job_id.decode())
            token = _queue.set(key)
            try:
                await self.start_jobs([job_id])
            finally:
                _queue.reset(token)
            if self.tasks.get(job_id.decode()) is before:
                # Running elsewhere or gone: the slot is still free, so the turn is not spent.
                self._turns.unpick(candidates, key)
            if not ready[key]:
                del ready[key]

    async def _wait_for_work(self) -> None:
        """Until a deferred job is due, a running job ends, an enqueue is announced, or the
        longest wait is over."""
        timeout = self.max_wait_s
        if self._next_due_ms is not None and self.job_counter < self.max_jobs:
            timeout = min(timeout, max((self._next_due_ms - timestamp_ms()) / 1000, 0))
        if timeout <= 0 or self._wakeup.is_set():
            return
        running = [task for task in self.tasks.values() if not task.done()]
        wakeup = asyncio.create_task(self._wakeup.wait())
        try:
            await asyncio.wait(
                [wakeup, *running], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            wakeup.cancel()

    async def _listen(self, channel: str) -> None:
        """Set the wakeup event on every announced enqueue; reconnect after a lost connection."""
        while True:
            try:
                async with self.pool.pubsub() as pubsub:
                    await pubsub.subscribe(channel)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
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
