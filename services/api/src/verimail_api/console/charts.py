"""The overview's chart: processed and failed tasks per hour, as inline SVG (no script, no
request of its own), laid out here so that the template only draws."""

from __future__ import annotations

from dataclasses import dataclass

from verimail_shared.workers import HourCount

WIDTH, HEIGHT, BASELINE, LEFT = 720, 260, 220, 64


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    height: float
    width: float
    label: str


@dataclass(frozen=True)
class Chart:
    processed: list[Bar]
    failed: list[Bar]
    ticks: list[tuple[float, str]]  # (y, label) of the scale
    hours: list[tuple[float, str]]  # (x, label) every 6 hours
    width: int = WIDTH
    height: int = HEIGHT
    baseline: int = BASELINE
    left: int = LEFT


def _nice_max(value: int) -> int:
    """The smallest 1, 2 or 5 times 10^n at or above `value` (at least 10): half is whole too."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if factor * step >= max(value, 10):
                return factor * step
        step *= 10


def bar_chart(hours: list[HourCount]) -> Chart:
    top = _nice_max(max((max(h.processed, h.failed) for h in hours), default=0))
    slot = (WIDTH - LEFT - 8) / max(len(hours), 1)
    bar = max(slot / 2 - 1, 1)
    plot = BASELINE - 12

    def bars(values: list[int], shift: float, kind: str) -> list[Bar]:
        result = []
        for index, (hour, value) in enumerate(zip(hours, values, strict=True)):
            height = plot * value / top
            x = LEFT + index * slot + shift
            label = f"{hour.hour:%H}:00 UTC: {value} {kind}"
            result.append(
                Bar(
                    round(x, 1), round(BASELINE - height, 1), round(height, 1), round(bar, 1), label
                )
            )
        return result

    ticks = [(round(BASELINE - plot * f, 1), f"{int(top * f)}") for f in (0, 0.5, 1)]
    labels = [
        (round(LEFT + i * slot, 1), f"{h.hour:%H}h") for i, h in enumerate(hours) if i % 6 == 0
    ]
    return Chart(
        bars([h.processed for h in hours], 0, "processed"),
        bars([h.failed for h in hours], bar + 1, "failed"),
        ticks,
        labels,
    )
