"""`verimail-admin`: the console's views and actions on the command line.

Reads the same environment as the services (DATABASE_URL, REDIS_URL, …) and talks to
PostgreSQL and Redis directly through the Inspector, as the console does. Tables by default,
`--json` for scripts. Exit codes: 0 success, 1 not found (or a dependency unreachable), 2 usage.
Logs (every action's `admin_action` line) go to stderr; stdout holds only the answer.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, is_dataclass
from datetime import datetime
from functools import wraps
from typing import Any, NoReturn, TypeVar

import click
import structlog
from pydantic import ValidationError
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlmodel import SQLModel

from verimail_shared import db, queue
from verimail_shared.errors import InvalidArgument, VerimailError
from verimail_shared.inspector import MAX_PAGE_SIZE, DeadFilter, Inspector, Lookup, mask_secrets
from verimail_shared.logs import configure_logging
from verimail_shared.settings import Settings, get_settings, mask_url

log = structlog.get_logger("verimail_shared.admin")
T = TypeVar("T")
EXIT_FAILURE = 1  # not found, refused, or PostgreSQL/Redis unreachable
EXIT_USAGE = 2


@asynccontextmanager
async def inspector(settings: Settings) -> Any:
    engine = db.create_engine(settings, pre_ping=False)
    redis = queue.connect(settings)
    try:
        yield Inspector(
            redis,
            db.create_sessionmaker(engine),
            list(settings.worker_queues),
            settings.email_sender,
        )
    finally:
        await redis.aclose(close_connection_pool=True)
        await engine.dispose()


def run(work: Callable[[Inspector], Awaitable[T]]) -> T:
    """Run `work` against PostgreSQL and Redis; any failure is one line on stderr."""
    settings = get_settings()

    async def main() -> T:
        async with inspector(settings) as found:
            await _reachable(found, settings)
            return await work(found)

    try:
        return asyncio.run(main())
    except InvalidArgument as exc:
        problems = "; ".join(f"{v.field}: {v.description}" for v in exc.violations)
        raise click.UsageError(problems) from None
    except (VerimailError, Unreachable) as exc:  # NotFound, an action refused, a dependency
        fail(str(exc), EXIT_FAILURE)


class Unreachable(Exception):
    """PostgreSQL or Redis did not answer."""


async def _reachable(found: Inspector, settings: Settings) -> None:
    """Ask each dependency once, so that the error names the one that is down."""
    try:
        await found.redis.ping()
    except (RedisError, OSError, TimeoutError) as exc:
        where = mask_url(settings.redis_url)
        raise Unreachable(f"Redis at {where} is unreachable ({type(exc).__name__})") from None
    try:
        async with found.sessions() as session:
            await session.execute(text("SELECT 1"))
    except (DBAPIError, OSError, TimeoutError) as exc:
        where = mask_url(settings.database_url)
        raise Unreachable(f"PostgreSQL at {where} is unreachable ({type(exc).__name__})") from None


def fail(message: str, code: int) -> NoReturn:
    click.echo(f"verimail-admin: error: {message}", err=True)
    sys.exit(code)


def plain(value: Any) -> Any:
    """JSON-ready: dataclasses and table rows as dicts, times as RFC 3339."""
    if isinstance(value, SQLModel):
        return {k: plain(v) for k, v in value.model_dump().items()}
    if is_dataclass(value) and not isinstance(value, type):
        return {k: plain(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """An aligned plain-text table."""
    cells = [[str(h).upper() for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def emit(as_json: bool, data: Any, show: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(plain(data), indent=2))
    else:
        show()


def audit(action: str, target: str, message: str, changed: bool) -> None:
    log.info("admin_action", action=action, target=target, result=message, changed=changed)


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead.")


def command_with_logging(function: Callable[..., None]) -> Callable[..., None]:
    @wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            settings = get_settings()
        except ValidationError as exc:
            fields = ", ".join(str(e["loc"][0]).upper() for e in exc.errors() if e["loc"])
            fail(f"invalid settings in the environment: {fields}", EXIT_USAGE)
        configure_logging(settings, stream=sys.stderr)
        function(*args, **kwargs)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Look at and act on Verimail's queues, workers, dead letters and signups."""


@cli.command()
@json_option
@command_with_logging
def queues(as_json: bool) -> None:
    """Per queue: ready, deferred, in progress, dead."""
    rows = run(lambda i: i.queues())
    emit(
        as_json,
        {"queues": rows},
        lambda: table(
            ["queue", "ready", "deferred", "in_progress", "dead"],
            [(r.name, r.ready, r.deferred, r.in_progress, r.dead) for r in rows],
        ),
    )


@cli.command()
@json_option
@command_with_logging
def workers(as_json: bool) -> None:
    """Live workers: host, queues and weights, jobs running, started, last heartbeat."""
    rows = run(lambda i: i.workers())
    data = [{**plain(w), "started": w.started, "heartbeat": w.heartbeat} for w in rows]
    emit(
        as_json,
        {"workers": data},
        lambda: (
            table(
                ["host", "pid", "queues", "running", "started", "heartbeat"],
                [
                    (
                        w.host,
                        w.pid,
                        ",".join(f"{q}:{n}" for q, n in w.queues.items()),
                        f"{w.running}/{w.max_jobs}",
                        w.started,
                        w.heartbeat,
                    )
                    for w in rows
                ],
            )
            if rows
            else click.echo("no live workers")
        ),
    )


@cli.group("dead-tasks")
def dead_tasks() -> None:
    """Dead letters: tasks that failed for good."""


@dead_tasks.command("list")
@click.option("--task", default="", help="Only this task.")
@click.option("--queue", "queue_name", default="", help="Only this queue.")
@click.option("--error", default="", help="Only those whose error contains this text.")
@click.option(
    "--status",
    type=click.Choice(["waiting", "requeued", "all"]),
    default="waiting",
    show_default=True,
)
@click.option("--limit", type=click.IntRange(1, MAX_PAGE_SIZE), default=50, show_default=True)
@json_option
@command_with_logging
def dead_list(
    task: str, queue_name: str, error: str, status: str, limit: int, as_json: bool
) -> None:
    """Newest first."""

    async def work(i: Inspector) -> Any:
        where = DeadFilter.parse(
            {"task": task, "queue": queue_name, "error": error, "status": status},
            i.queue_names,
        )
        return await i.dead_letters(where, 1, limit)

    page = run(work)
    rows = [{**plain(r), "payload": mask_secrets(r.payload)} for r in page.items]
    emit(
        as_json,
        {"dead_tasks": rows, "total": page.total},
        lambda: table(
            ["id", "task", "queue", "tries", "failed_at", "requeued_at", "error"],
            [
                (
                    r.id,
                    r.task,
                    r.queue,
                    r.tries,
                    r.failed_at,
                    r.requeued_at,
                    _one_line(r.last_error, 60),
                )
                for r in page.items
            ],
        ),
    )


def _one_line(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _ids(values: tuple[int, ...]) -> Iterator[int]:
    yield from dict.fromkeys(values)


@dead_tasks.command("retry")
@click.argument("ids", nargs=-1, type=click.IntRange(min=1))
@click.option("--all", "every", is_flag=True, help="Every waiting dead letter (matching filters).")
@click.option("--task", default="", help="With --all: only this task.")
@click.option("--queue", "queue_name", default="", help="With --all: only this queue.")
@json_option
@command_with_logging
def dead_retry(
    ids: tuple[int, ...], every: bool, task: str, queue_name: str, as_json: bool
) -> None:
    """Re-queue dead letters by ID, or --all; re-queuing one twice queues it once."""
    if bool(ids) == every:
        raise click.UsageError("give dead letter IDs or --all, not both and not neither")

    async def work(i: Inspector) -> list[dict[str, Any]]:
        if every:
            where = DeadFilter.parse({"task": task, "queue": queue_name}, i.queue_names)
            outcome = await i.requeue_matching(where)
            audit("dead_letter_requeue_matching", "all", outcome.message, outcome.changed)
            return [{"id": None, "result": outcome.message, "changed": outcome.changed}]
        results = []
        for dead_id in _ids(ids):
            outcome = await i.requeue_dead(dead_id)
            audit("dead_letter_requeue", str(dead_id), outcome.message, outcome.changed)
            results.append({"id": dead_id, "result": outcome.message, "changed": outcome.changed})
        return results

    results = run(work)
    emit(as_json, {"results": results}, lambda: click.echo("\n".join(r["result"] for r in results)))


@dead_tasks.command("delete")
@click.argument("ids", nargs=-1, type=click.IntRange(min=1), required=True)
@json_option
@command_with_logging
def dead_delete(ids: tuple[int, ...], as_json: bool) -> None:
    """Delete dead letters by ID."""

    async def work(i: Inspector) -> str:
        outcome = await i.delete_dead(list(_ids(ids)))
        audit("dead_letter_delete", ",".join(map(str, ids)), outcome.message, outcome.changed)
        return outcome.message

    message = run(work)
    emit(as_json, {"result": message}, lambda: click.echo(message))


@cli.command()
@click.argument("email_or_username")
@json_option
@command_with_logging
def lookup(email_or_username: str, as_json: bool) -> None:
    """A signup and each of its verification emails, from outbox row to used code."""
    found = run(lambda i: i.lookup(email_or_username))
    emit(as_json, lookup_body(found), lambda: show_lookup(found))


def lookup_body(found: Lookup) -> dict[str, Any]:
    """The user without its password hash; each email without its code hash."""
    user = found.user
    return {
        "user": {
            "username": user.username,
            "full_name": user.full_name,
            "email": user.email,
            "is_email_verified": user.is_email_verified,
            "created_at": plain(user.created_at),
        },
        "emails": [
            {
                "job_id": s.job_id,
                "outbox": {
                    "created_at": plain(s.outbox.created_at),
                    "dispatched_at": plain(s.outbox.dispatched_at),
                    "completed_at": plain(s.outbox.completed_at),
                }
                if s.outbox
                else None,
                "job": plain(s.job),
                "sent_at": plain(s.email.sent_at) if s.email else None,
                "message_id": s.message_id,
                "email_id": s.email.id if s.email else None,
                "expires_at": plain(s.email.expired_at) if s.email else None,
                "code_used": s.email.is_used if s.email else None,
                "dead_tasks": [
                    {
                        "id": d.id,
                        "failed_at": plain(d.failed_at),
                        "requeued_at": plain(d.requeued_at),
                        "error": d.last_error,
                    }
                    for d in s.dead
                ],
            }
            for s in found.stories
        ],
    }


def show_lookup(found: Lookup) -> None:
    user = found.user
    verified = "verified" if user.is_email_verified else "not verified"
    click.echo(f"{user.username} <{user.email}>, {verified}, signed up {_cell(user.created_at)}")
    if not found.stories:
        click.echo("no verification email on record")
        return
    rows = []
    for s in found.stories:
        rows.append(
            (
                s.job_id,
                s.outbox.created_at if s.outbox else None,
                s.outbox.dispatched_at if s.outbox else None,
                f"{s.job.state} ({s.job.tries} tries)",
                s.email.sent_at if s.email else None,
                s.message_id,
                ("used" if s.email.is_used else f"expires {_cell(s.email.expired_at)}")
                if s.email
                else None,
                ",".join(str(d.id) for d in s.dead) or None,
            )
        )
    table(["job", "written", "dispatched", "job_state", "sent", "message_id", "code", "dead"], rows)


def main() -> None:
    try:
        cli.main(prog_name="verimail-admin", standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
