"""Smooth weighted round robin, the order in which the worker fills slots from its queues."""

from __future__ import annotations

from collections import Counter

from verimail_worker.weighted import WeightedRoundRobin


def test_picks_follow_the_weights_interleaved() -> None:
    turns = WeightedRoundRobin({"critical": 10, "default": 5})
    picks = [turns.pick(("critical", "default")) for _ in range(30)]
    assert Counter(picks) == {"critical": 20, "default": 10}
    # Interleaved: with both queues in the running, never three critical picks in a row.
    runs = "".join(pick[0] for pick in picks).split("d")
    assert max(len(run) for run in runs) == 2


def test_a_queue_without_work_gives_its_share_away() -> None:
    turns = WeightedRoundRobin({"critical": 10, "default": 5})
    assert {turns.pick(("default",)) for _ in range(10)} == {"default"}


def test_an_unused_pick_can_be_taken_back() -> None:
    turns = WeightedRoundRobin({"a": 2, "b": 1})
    first = turns.pick(("a", "b"))
    turns.unpick(("a", "b"), first)
    assert turns.pick(("a", "b")) == first
