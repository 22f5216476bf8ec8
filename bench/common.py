"""Helpers shared by the bench scripts: the drain timer and the table of medians with ratios."""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import time

from redis.asyncio import Redis


async def drain_rate(
    redis: Redis, done_key: str, count: int, worker: subprocess.Popen[bytes]
) -> float:
    """Tasks per second from the first completion counted at `done_key` to the last, as
    bench/throughput.py measures it; fails fast if the worker process dies before the end."""
    started = None
    while True:
        done = int(await redis.get(done_key) or 0)
        if done and started is None:
            started = time.perf_counter()
        if done >= count:
            break
        if worker.poll() is not None:
            raise RuntimeError(f"worker exited with {worker.returncode} after {done} of {count}")
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - (started or time.perf_counter())
    return (count - 1) / elapsed if elapsed else 0.0


def print_ratio_table(
    runs: dict[str, list[float]], reference: str, unit: str = "tasks/s", digits: int = 0
) -> dict[str, float]:
    """Print side, median, reference ÷ side and every run (`digits` after the point); return
    the medians."""
    medians = {side: statistics.median(values) for side, values in runs.items()}
    heading = f"{unit} (median)"
    print(f"{'side':<14} {heading:>18} {f'{reference} ÷ side':>13}  runs")
    for side, values in runs.items():
        ratio = medians[reference] / medians[side] if medians[side] else float("inf")
        print(
            f"{side:<14} {medians[side]:>18.{digits}f} {ratio:>13.2f}  "
            + ", ".join(f"{v:.{digits}f}" for v in values)
        )
    return medians
