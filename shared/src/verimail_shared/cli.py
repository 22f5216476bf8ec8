"""What every Verimail command does with an error a person must fix: one line, non-zero exit.

`run(prog, main)` wraps a command's body: a `CommandError` (its message says what is wrong and
how to fix it), invalid settings, or any other exception that escapes becomes one line on
stderr, `prog: …`, never a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn

from pydantic import ValidationError

from verimail_shared.settings import Settings, get_settings


class CommandError(Exception):
    """An error whose message is the whole story: what is wrong, and the fix."""


def load_settings() -> Settings:
    """The process's settings, or a `CommandError` naming each variable that is wrong."""
    try:
        return get_settings()
    except ValidationError as exc:
        raise CommandError(f"invalid settings: {settings_errors(exc)}") from None


def settings_errors(exc: ValidationError) -> str:
    """`NAME: problem; …` with environment variable names; values are never quoted."""
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']).upper()}: {error['msg']}"
        for error in exc.errors()
    )


def run(prog: str, main: Callable[[], int | None]) -> NoReturn:
    try:
        code = main()
    except CommandError as exc:
        _fail(prog, str(exc), 1)
    except ValidationError as exc:
        _fail(prog, f"invalid settings: {settings_errors(exc)}", 2)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # the last resort: still one line, naming what went wrong
        _fail(prog, f"{type(exc).__name__}: {exc}", 1)
    sys.exit(code or 0)


def _fail(prog: str, message: str, code: int) -> NoReturn:
    line = " ".join(message.split())  # server messages may span lines; ours is one
    print(f"{prog}: {line}", file=sys.stderr, flush=True)
    sys.exit(code)
