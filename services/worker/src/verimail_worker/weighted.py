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

from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from typing import Any

from arq.utils import timestamp_ms
from arq.worker import Worker

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


class WeightedWorker(Worker):
    def __init__(self, *args: Any, queues: Mapping[str, int], **kwargs: Any) -> None:
        if not queues:
            raise ValueError("a worker needs at least one queue")
        self.weights = dict(queues)
        self._turns = WeightedRoundRobin(self.weights)
        self._home_queue = next(iter(self.weights))
        super().__init__(*args, queue_name=self._home_queue, **kwargs)

    @property
    def queue_name(self) -> str:
        return _queue.get(self._home_queue)

    @queue_name.setter
    def queue_name(self, value: str) -> None:
        self._home_queue = value

    async def _poll_iteration(self) -> None:
        if self.allow_pick_jobs and self.job_counter < self.max_jobs:
            await self._start_weighted()
        if self.allow_abort_jobs:
            await self._cancel_aborted_jobs()
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                task.result()  # surface errors in run_job, as arq does
        await self.heart_beat()

    async def _start_weighted(self) -> None:
        now = timestamp_ms()
        async with self.pool.pipeline(transaction=False) as pipe:
            for key in self.weights:
                pipe.zrangebyscore(
                    key, min=float("-inf"), max=now, start=0, num=self.queue_read_limit
                )
            results = await pipe.execute()
        ready = {key: list(ids) for key, ids in zip(self.weights, results, strict=True) if ids}
        while ready and self.job_counter < self.max_jobs:
            candidates = tuple(ready)
            key = self._turns.pick(candidates)
            before = self.job_counter
            token = _queue.set(key)
            try:
                await self.start_jobs([ready[key].pop(0)])
            finally:
                _queue.reset(token)
            if self.job_counter == before:
                # Running elsewhere or gone: the slot is still free, so the turn is not spent.
                self._turns.unpick(candidates, key)
            if not ready[key]:
                del ready[key]
