"""Structured logging for every Verimail process: JSON lines, or readable ones for a console.

Our own events (structlog) take the short path in JSON mode: filtered by level before any work
(a `debug` call below the level costs one method call), rendered by orjson, written as one
line of bytes. The standard library's records (uvicorn, arq, alembic) are rendered by the same
processors through a logging handler, so every line has the same shape.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, BinaryIO, TextIO

import orjson
import structlog

from verimail_shared.settings import LogFormat, Settings


class _NamedBytesLogger(structlog.BytesLogger):
    """structlog's bytes logger with the name it was asked for, for `add_logger_name`."""

    def __init__(self, file: BinaryIO, name: str) -> None:
        super().__init__(file)
        self.name = name


class _NamedBytesLoggerFactory:
    def __init__(self, file: BinaryIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedBytesLogger:
        return _NamedBytesLogger(self._file, str(args[0]) if args else "")


def _orjson_dumps(value: Any, **kwargs: Any) -> bytes:
    # Keys that are not strings (rare) become strings rather than a failed log line.
    rendered: bytes = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS, **kwargs)
    return rendered


def configure_logging(settings: Settings, stream: TextIO | None = None) -> None:
    """Send structlog and the standard library (uvicorn, arq, alembic) through one renderer,
    to `stream` (standard output unless told otherwise)."""
    stream = stream or sys.stdout
    level = logging.getLevelNamesMapping()[settings.log_level.upper()]
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: structlog.types.Processor
    if settings.log_format is LogFormat.CONSOLE:
        renderer = structlog.dev.ConsoleRenderer()
    else:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    # Our middleware logs every request with its request id; uvicorn's access line would repeat it.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # The task runner logs every start, success and failure with job context; arq's own line
    # per job start and finish would repeat them. Its warnings and errors still show.
    logging.getLogger("arq.worker").setLevel(max(level, logging.WARNING))

    if settings.log_format is LogFormat.CONSOLE:
        structlog.configure(
            processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
            logger_factory=structlog.stdlib.LoggerFactory(),
            wrapper_class=structlog.make_filtering_bound_logger(level),
            cache_logger_on_first_use=True,
        )
        return
    stream.flush()  # whatever the text layer holds goes out before our bytes
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        logger_factory=_NamedBytesLoggerFactory(stream.buffer),
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=True,
    )
