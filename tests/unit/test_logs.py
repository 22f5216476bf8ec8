"""JSON logging: our events and the standard library's records both come out as JSON lines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from verimail_shared.logs import configure_logging
from verimail_shared.settings import Settings


@pytest.fixture
def output() -> Iterator[io.TextIOWrapper]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", write_through=True)
    yield stream
    root.handlers[:], root.level = handlers, level
    structlog.reset_defaults()


def lines(stream: io.TextIOWrapper) -> list[dict[str, object]]:
    stream.flush()
    assert isinstance(stream.buffer, io.BytesIO)
    raw = stream.buffer.getvalue().decode()
    return [json.loads(line) for line in raw.splitlines()]


def test_our_events_and_library_records_are_json_lines_with_level_and_logger(
    output: io.TextIOWrapper,
) -> None:
    configure_logging(Settings(_env_file=None, log_format="json", log_level="INFO"), output)
    structlog.get_logger("verimail_worker.runner").info("task_processed", duration_ms=1.5)
    logging.getLogger("uvicorn.error").warning("library %s", "record")
    ours, library = lines(output)
    assert ours["event"] == "task_processed"
    assert ours["duration_ms"] == 1.5
    assert (ours["level"], ours["logger"]) == ("info", "verimail_worker.runner")
    assert library["event"] == "library record"
    assert (library["level"], library["logger"]) == ("warning", "uvicorn.error")


def test_debug_events_are_dropped_below_the_configured_level(
    output: io.TextIOWrapper,
) -> None:
    configure_logging(Settings(_env_file=None, log_format="json", log_level="INFO"), output)
    structlog.get_logger("verimail_worker.runner").debug("task_started")
    logging.getLogger("asyncio").debug("Using selector")
    assert lines(output) == []
