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

from arq.constants import in_progress_key_prefix
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


# arq's rule for taking a job (its `start_jobs` applies it with WATCH and MULTI, four round
# trips per job), for a batch in one: a job is taken when no worker has it in progress and it
# is still in its queue and due; it is then marked in progress. KEYS come in pairs (queue, the
# job's in-progress key); ARGV is now (ms), the in-progress timeout (ms), then the job ids.
CLAIM_JOBS = """
local now, timeout = tonumber(ARGV[1]), ARGV[2]
local result = {}
for i = 1, #KEYS, 2 do
  local job_id = ARGV[2 + (i + 1) / 2]
  local score = redis.call('ZSCORE', KEYS[i], job_id)
  if score and tonumber(score) <= now and redis.call('EXISTS', KEYS[i + 1]) == 0 then
    redis.call('PSETEX', KEYS[i + 1], timeout, '1')
    result[#result + 1] = score
  else
    result[#result + 1] = -1
  end
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
        self._claim_jobs: AsyncScript | None = None

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
        while ready and self.allow_pick_jobs and self.job_counter < self.max_jobs:
            picks: list[tuple[tuple[str, ...], str, bytes]] = []
            while ready and len(picks) < self.max_jobs - self.job_counter:
                candidates = tuple(ready)
                key = self._turns.pick(candidates)
                picks.append((candidates, key, ready[key].pop(0)))
                if not ready[key]:
                    del ready[key]
            scores = await self._claim([(key, job_id) for _, key, job_id in picks])
            for (candidates, key, job_id), score in zip(picks, scores, strict=True):
                if score is None:
                    # Running elsewhere or gone: the slot is still free, so the turn is not spent.
                    self._turns.unpick(candidates, key)
                else:
                    await self._run(key, job_id.decode(), score)

    async def _claim(self, picks: list[tuple[str, bytes]]) -> list[int | None]:
        """Claim jobs as arq's `start_jobs` does, for a whole batch in one round trip."""
        if self._claim_jobs is None:
            self._claim_jobs = self.pool.register_script(CLAIM_JOBS)
        keys = [k for key, job_id in picks for k in (key, in_progress_key_prefix + job_id.decode())]
        timeout_ms = int(self.in_progress_timeout_s * 1000)
        scores = cast(
            list[bytes | int],
            await self._claim_jobs(
                keys=keys, args=[timestamp_ms(), timeout_ms, *(job_id for _, job_id in picks)]
            ),
        )
        return [None if score == -1 else int(float(score)) for score in scores]

    async def _run(self, key: str, job_id: str, score: int) -> None:
        """Run a claimed job, with the bookkeeping of arq's `start_jobs`."""
        await self.sem.acquire()  # never waits: a slot is free, and sem counts slots
        self.job_counter += 1
        token = _queue.set(key)  # the job's task copies the context: its run sees its queue
        try:
            task = asyncio.create_task(self.run_job(job_id, score))
        finally:
            _queue.reset(token)
        task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
        self.tasks[job_id] = task

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
