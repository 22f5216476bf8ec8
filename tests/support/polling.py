"""Waiting in tests: poll a condition until a deadline, never a bare sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, overload

T = TypeVar("T")


@overload
async def eventually(
    probe: Callable[[], Coroutine[Any, Any, T]],
    timeout: float = ...,
    interval: float = ...,
    message: str = ...,
) -> T: ...


@overload
async def eventually(
    probe: Callable[[], T],
    timeout: float = ...,
    interval: float = ...,
    message: str = ...,
) -> T: ...


async def eventually(
    probe: Callable[[], Coroutine[Any, Any, T]] | Callable[[], T],
    timeout: float = 15.0,
    interval: float = 0.05,
    message: str = "condition not met",
) -> T:
    """Call `probe` until it returns something truthy; return that, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        outcome = probe()
        result: T = await outcome if asyncio.iscoroutine(outcome) else outcome
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} within {timeout}s")
        await asyncio.sleep(interval)
