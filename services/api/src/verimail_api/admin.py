"""Operator routes: dead letters and queue counts, behind `Authorization: Bearer $ADMIN_TOKEN`.

Without ADMIN_TOKEN the routes do not exist (404), so a deployment that never set one exposes
nothing.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import func, select, update
from sqlmodel import col
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from verimail_api.schemas import rfc3339
from verimail_api.state import State
from verimail_shared import queue
from verimail_shared.db import transaction
from verimail_shared.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    Unauthenticated,
)
from verimail_shared.jobs import Queue, TaskName
from verimail_shared.tables import DeadTask, OutboxTask

log = structlog.get_logger(__name__)
MAX_LIMIT = 1000


def authorize(request: Request) -> State:
    """The app state, if the request carries the admin token; compared in constant time."""
    state: State = request.app.state.verimail
    token = state.settings.admin_token
    if token is None:
        raise NotFound("Not Found")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    expected = token.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        raise Unauthenticated("a valid admin bearer token is required")
    return state


def dead_task_body(row: DeadTask) -> dict[str, Any]:
    return {
        "id": row.id,
        "job_id": row.job_id,
        "task": row.task,
        "queue": row.queue,
        "payload": row.payload,
        "tries": row.tries,
        "last_error": row.last_error,
        "failed_at": rfc3339(row.failed_at) if row.failed_at else None,
        "requeued_at": rfc3339(row.requeued_at) if row.requeued_at else None,
    }


async def list_dead_tasks(request: Request) -> Response:
    """Newest first; `?include_requeued=true` shows those re-queued already, `?limit=` caps."""
    state = authorize(request)
    limit = _limit(request.query_params.get("limit", "100"))
    statement = select(DeadTask).order_by(col(DeadTask.id).desc()).limit(limit)
    if request.query_params.get("include_requeued", "false").lower() != "true":
        statement = statement.where(col(DeadTask.requeued_at).is_(None))
    async with state.signup.sessions() as session:
        rows = (await session.scalars(statement)).all()
    return JSONResponse({"dead_tasks": [dead_task_body(row) for row in rows]})


async def retry_dead_task(request: Request) -> Response:
    """Enqueue a dead task again under its job id, with a fresh count of tries."""
    state = authorize(request)
    dead_id = request.path_params["id"]
    if not 0 < dead_id < 2**63:  # beyond bigint: no such row, and no query to make
        raise NotFound(f"dead task {dead_id} not found")
    async with transaction(state.signup.sessions) as session:
        row = await session.get(DeadTask, dead_id, with_for_update=True)
        if row is None:
            raise NotFound(f"dead task {dead_id} not found")
        if row.requeued_at is not None:
            raise FailedPrecondition(f"dead task {dead_id} was re-queued already")
        fresh = await queue.requeue(state.redis, TaskName(row.task), row.payload, job_id=row.job_id)
        if not fresh:
            raise FailedPrecondition(f"job {row.job_id} is queued or running already")
        row.requeued_at = datetime.now(UTC)
        # Unfinished again: the outbox reconciler watches it until it completes.
        await session.execute(
            update(OutboxTask)
            .where(col(OutboxTask.job_id) == row.job_id)
            .values(completed_at=None, dispatched_at=row.requeued_at)
        )
    log.info("dead_task_requeued", dead_task_id=dead_id, job_id=row.job_id, task=row.task)
    return JSONResponse({"dead_task": dead_task_body(row)})


async def queues(request: Request) -> Response:
    """Per queue: ready (due, waiting), deferred (due later), in progress, dead."""
    state = authorize(request)
    names = list(dict.fromkeys([*(q.value for q in Queue), *state.settings.worker_queues]))
    counts = await queue.queue_counts(state.redis, names)
    async with state.signup.sessions() as session:
        rows = await session.execute(
            select(col(DeadTask.queue), func.count())
            .where(col(DeadTask.requeued_at).is_(None))
            .group_by(col(DeadTask.queue))
        )
        dead = {name: count for name, count in rows}
    return JSONResponse(
        {
            "queues": [
                {
                    "name": name,
                    "ready": counts[name].ready,
                    "deferred": counts[name].deferred,
                    "in_progress": counts[name].in_progress,
                    "dead": dead.get(name, 0),
                }
                for name in names
            ]
        }
    )


def _limit(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= MAX_LIMIT:
        raise InvalidArgument(
            [FieldViolation("limit", f"must be an integer from 1 to {MAX_LIMIT}")]
        )
    return int(raw)


ROUTES = [
    Route("/v1/admin/dead_tasks", list_dead_tasks, methods=["GET"]),
    Route("/v1/admin/dead_tasks/{id:int}/retry", retry_dead_task, methods=["POST"]),
    Route("/v1/admin/queues", queues, methods=["GET"]),
]
