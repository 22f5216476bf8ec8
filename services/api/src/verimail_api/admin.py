"""Operator routes: dead letters and queue counts, behind `Authorization: Bearer $ADMIN_TOKEN`.

Without ADMIN_TOKEN the routes do not exist (404), so a deployment that never set one exposes
nothing.
"""

from __future__ import annotations

import hmac
from datetime import UTC, datetime

import structlog
from sqlalchemy import func, select, update
from sqlmodel import col
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from verimail_api.responses import JSONAnswer
from verimail_api.schemas import DeadTask as DeadTaskAnswer
from verimail_api.schemas import (
    DeadTaskResponse,
    DeadTasksQuery,
    DeadTasksResponse,
    QueueCounts,
    QueuesResponse,
    parse,
)
from verimail_api.state import State
from verimail_shared import queue
from verimail_shared.db import transaction
from verimail_shared.errors import FailedPrecondition, NotFound, Unauthenticated
from verimail_shared.jobs import Queue, TaskName
from verimail_shared.tables import DeadTask, OutboxTask

log = structlog.get_logger(__name__)


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


async def list_dead_tasks(request: Request) -> Response:
    """Newest first; `?include_requeued=true` shows those re-queued already, `?limit=` caps."""
    state = authorize(request)
    query = parse(DeadTasksQuery, dict(request.query_params))
    statement = select(DeadTask).order_by(col(DeadTask.id).desc()).limit(query.limit)
    if not query.include_requeued:
        statement = statement.where(col(DeadTask.requeued_at).is_(None))
    async with state.signup.sessions() as session:
        rows = (await session.scalars(statement)).all()
    dead_tasks = [DeadTaskAnswer.model_validate(row) for row in rows]
    return JSONAnswer(DeadTasksResponse(dead_tasks=dead_tasks))


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
    return JSONAnswer(DeadTaskResponse(dead_task=DeadTaskAnswer.model_validate(row)))


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
    return JSONAnswer(
        QueuesResponse(
            queues=[
                QueueCounts(
                    name=name,
                    ready=counts[name].ready,
                    deferred=counts[name].deferred,
                    in_progress=counts[name].in_progress,
                    dead=dead.get(name, 0),
                )
                for name in names
            ]
        )
    )


ROUTES = [
    Route("/v1/admin/dead_tasks", list_dead_tasks, methods=["GET"]),
    Route("/v1/admin/dead_tasks/{id:int}/retry", retry_dead_task, methods=["POST"]),
    Route("/v1/admin/queues", queues, methods=["GET"]),
]
