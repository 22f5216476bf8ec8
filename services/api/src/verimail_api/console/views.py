"""The console's pages and actions: server-rendered HTML, plain forms, no JavaScript.

Every page needs a session; every POST needs the session's CSRF token (403 without). Actions
answer with a redirect to the page they came from (POST/redirect/GET), carrying a one-shot
notice. Bad input of any kind is a page that says what was wrong, with its 4xx status.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qsl, urlencode

import structlog
from jinja2 import Environment, PackageLoader, select_autoescape
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from verimail_api.console.charts import bar_chart
from verimail_api.console.sessions import Session, Sessions
from verimail_api.errors import DEPENDENCY_ERRORS
from verimail_api.middleware import current_request_id
from verimail_api.ratelimit import Rate
from verimail_api.state import State
from verimail_shared.errors import (
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    VerimailError,
)
from verimail_shared.inspector import (
    JOB_STATES,
    DeadFilter,
    Inspector,
    Outcome,
    mask_secrets,
    page_number,
)
from verimail_shared.jobs import TaskName

log = structlog.get_logger(__name__)
MAX_FORM_BYTES = 16384
MAX_IDS = 1000
_JOB_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# The console's own stylesheet is all that may load; forms post only to the console.
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
STATUS = {InvalidArgument: 400, NotFound: 404, FailedPrecondition: 409, ResourceExhausted: 429}

_templates = Environment(
    loader=PackageLoader("verimail_api", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_templates.filters["when"] = lambda d: d.strftime("%Y-%m-%d %H:%M:%S UTC") if d else "—"
STYLESHEET = (files("verimail_api") / "templates" / "console" / "console.css").read_bytes()


@dataclass(frozen=True)
class Console:
    """What the console holds for the app's lifetime, built on first use from its State."""

    state: State
    inspector: Inspector
    sessions: Sessions
    login_rate: Rate | None


def console(request: Request) -> Console:
    existing: Console | None = getattr(request.app.state, "console", None)
    if existing is not None:
        return existing
    state: State = request.app.state.verimail
    settings = state.settings
    built = Console(
        state,
        Inspector(
            state.redis,
            state.signup.sessions,
            list(settings.worker_queues),
            settings.email_sender,
        ),
        Sessions(settings, state.redis),
        Rate.parse(settings.rate_limit_admin_login),
    )
    request.app.state.console = built
    return built


class StaleForm(VerimailError):
    """A POST without the session's CSRF token, or without a session at all."""


def render(
    template: str, context: dict[str, Any], status: int = 200, **headers: str
) -> HTMLResponse:
    html = _templates.get_template(f"console/{template}").render(context)
    return HTMLResponse(html, status, headers={"Content-Security-Policy": CSP, **headers})


def audit(action: str, target: str, outcome: Outcome | None = None) -> None:
    """Every admin action is logged, whatever came of it."""
    log.info(
        "admin_action",
        action=action,
        target=target,
        request_id=current_request_id(),
        changed=outcome.changed if outcome else None,
        result=outcome.message if outcome else None,
    )


async def read_form(request: Request) -> dict[str, list[str]]:
    """An urlencoded body (a plain HTML form), at most MAX_FORM_BYTES."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise InvalidArgument([FieldViolation("body", "the form is too large")])
    form: dict[str, list[str]] = {}
    for key, value in parse_qsl(body.decode(errors="replace"), keep_blank_values=True):
        form.setdefault(key, []).append(value)
    return form


def first(form: dict[str, list[str]], name: str) -> str:
    return form.get(name, [""])[0]


Handler = Callable[[Request, Console, Session], Awaitable[Response]]


def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A console page: signed in, errors shown on the page, notices passed along."""

    async def endpoint(request: Request) -> Response:
        app = console(request)
        try:
            session = await app.sessions.current(request)
        except (RedisError, OSError) as exc:
            return _unavailable(exc)
        if session is None:
            return RedirectResponse("/admin/login", 303)
        return await _answer(handler, request, app, session)

    return endpoint


def action(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A console action (POST): signed in and carrying the session's CSRF token, or 403."""

    async def endpoint(request: Request) -> Response:
        app = console(request)
        try:
            session = await app.sessions.current(request)
            form = await read_form(request)
        except (RedisError, OSError) as exc:
            return _unavailable(exc)
        except InvalidArgument as exc:
            return _error_page(None, exc)
        if session is None or not Sessions.csrf_valid(session, first(form, "csrf")):
            audit("refused_stale_form", request.url.path)
            return _error_page(
                None,
                StaleForm(
                    "This form is stale or did not come from the console: "
                    "nothing was changed. Reload the page and try again."
                ),
            )
        request.state.form = form
        return await _answer(handler, request, app, session)

    return endpoint


async def _answer(handler: Handler, request: Request, app: Console, session: Session) -> Response:
    """The handler's answer, or a page saying what went wrong: nothing was half done."""
    try:
        return await handler(request, app, session)
    except VerimailError as exc:
        return _error_page(session, exc)
    except DEPENDENCY_ERRORS as exc:
        return _unavailable(exc)


def _error_page(session: Session | None, exc: VerimailError) -> HTMLResponse:
    status = next((code for kind, code in STATUS.items() if isinstance(exc, kind)), 400)
    if isinstance(exc, StaleForm):
        status = 403
    problems = (
        [f"{v.field}: {v.description}" for v in exc.violations]
        if isinstance(exc, InvalidArgument)
        else [str(exc)]
    )
    headers = {}
    if isinstance(exc, ResourceExhausted):
        headers["Retry-After"] = str(exc.retry_after)
    context = {"title": "Not done", "problems": problems, "session": session}
    return render("error.html", context, status, **headers)


def _unavailable(exc: BaseException) -> HTMLResponse:
    log.warning("dependency_unavailable", error=f"{type(exc).__name__}: {exc}")
    context = {
        "title": "Unavailable",
        "problems": ["PostgreSQL or Redis did not answer; nothing was changed. Try again."],
        "session": None,
    }
    return render("error.html", context, 503)


async def _notice(app: Console, session: Session) -> str | None:
    raw = await app.state.redis.getdel(_notice_key(session))
    return raw.decode() if raw else None


def _notice_key(session: Session) -> str:
    return f"verimail:console:notice:{session.csrf}"


async def done(app: Console, session: Session, outcome: Outcome, to: str) -> Response:
    await app.state.redis.set(_notice_key(session), outcome.message, ex=60)
    return RedirectResponse(to, 303)


async def context(app: Console, session: Session, **values: Any) -> dict[str, Any]:
    return {"session": session, "notice": await _notice(app, session), **values}


# Sign-in and sign-out


def _login_page(request: Request, app: Console, problems: list[str], status: int = 200) -> Response:
    csrf, cookie = app.sessions.login_csrf(request)
    response = render(
        "login.html", {"title": "Sign in", "problems": problems, "csrf": csrf}, status
    )
    if cookie is not None:
        app.sessions.set_login_cookie(request, response, cookie)
    return response


async def login_form(request: Request) -> Response:
    return _login_page(request, console(request), [])


async def login(request: Request) -> Response:
    app = console(request)
    state = app.state
    problems: list[str] = []
    status = 401
    headers: dict[str, str] = {}
    try:
        await state.limits.limiter.hit("admin_login", state.limits.client(request), app.login_rate)
        form = await read_form(request)
    except ResourceExhausted as exc:
        audit("login_refused", "console", Outcome("too many attempts", changed=False))
        problems, status = [f"Too many sign-in attempts; {exc}."], 429
        headers["Retry-After"] = str(exc.retry_after)
        form = {}
    except InvalidArgument:
        problems, status, form = ["The form could not be read."], 400, {}
    if not problems and not app.sessions.login_csrf_valid(request, first(form, "csrf")):
        audit("refused_stale_form", "/admin/login")
        problems, status = ["This sign-in form is stale; it has been renewed, try again."], 403
    if not problems and not app.sessions.token_matches(first(form, "token")):
        audit("login_failed", "console")
        problems = ["That token is not right."]
    if not problems:
        redirect = RedirectResponse("/admin/", 303)
        try:
            await app.sessions.start(request, redirect)
        except (RedisError, OSError) as exc:
            return _unavailable(exc)
        audit("login", "console")
        return redirect
    response = _login_page(request, app, problems, status)
    response.headers.update(headers)
    return response


@action
async def logout(request: Request, app: Console, session: Session) -> Response:
    response = RedirectResponse("/admin/login", 303)
    await app.sessions.end(session, request, response)
    audit("logout", "console")
    return response


async def to_overview(request: Request) -> Response:
    return RedirectResponse("/admin/", 308)


async def stylesheet(request: Request) -> Response:
    return Response(
        STYLESHEET,
        media_type="text/css",
        headers={"Cache-Control": "private, max-age=3600", "Content-Security-Policy": CSP},
    )


# Overview


@page
async def overview(request: Request, app: Console, session: Session) -> Response:
    queues = await app.inspector.queues()
    hours = await app.inspector.hourly()
    backlog, oldest = await app.inspector.outbox_backlog()
    workers = await app.inspector.workers()
    return render(
        "overview.html",
        await context(
            app,
            session,
            title="Overview",
            queues=queues,
            hours=hours,
            chart=bar_chart(hours),
            backlog=backlog,
            oldest=oldest,
            workers=workers,
        ),
    )


# Queues


@page
async def queue_list(request: Request, app: Console, session: Session) -> Response:
    queues = await app.inspector.queues()
    return render("queues.html", await context(app, session, title="Queues", queues=queues))


@page
async def queue_jobs(request: Request, app: Console, session: Session) -> Response:
    name = request.path_params["name"]
    app.inspector.check_queue(name)
    state = request.query_params.get("state", "ready")
    number = page_number(request.query_params.get("page"))
    jobs = await app.inspector.jobs(name, state, number)
    return render(
        "queue.html",
        await context(
            app,
            session,
            title=f"Queue {name}",
            queue=name,
            state=state,
            states=JOB_STATES,
            jobs=jobs,
            here=f"/admin/queues/{name}?{urlencode({'state': state, 'page': number})}",
        ),
    )


def _job_id(request: Request) -> str:
    job_id = str(request.path_params["job_id"])
    if not _JOB_ID.fullmatch(job_id):
        raise NotFound("no such job")
    return job_id


def _back(request: Request, fallback: str) -> str:
    """Where an action returns to: a console path the form named, else `fallback`."""
    to = first(request.state.form, "back")
    return to if to.startswith("/admin/") and not to.startswith("//") else fallback


@action
async def run_job_now(request: Request, app: Console, session: Session) -> Response:
    name, job_id = request.path_params["name"], _job_id(request)
    outcome = await app.inspector.run_now(name, job_id)
    audit("job_run_now", f"{name}/{job_id}", outcome)
    return await done(app, session, outcome, _back(request, f"/admin/queues/{name}"))


@action
async def delete_job(request: Request, app: Console, session: Session) -> Response:
    name, job_id = request.path_params["name"], _job_id(request)
    outcome = await app.inspector.delete_job(name, job_id)
    audit("job_delete", f"{name}/{job_id}", outcome)
    return await done(app, session, outcome, _back(request, f"/admin/queues/{name}"))


# Dead letters


def _filter(app: Console, params: dict[str, str]) -> DeadFilter:
    return DeadFilter.parse(params, app.inspector.queue_names)


@page
async def dead_letters(request: Request, app: Console, session: Session) -> Response:
    params = dict(request.query_params)
    where = _filter(app, params)
    number = page_number(params.get("page"))
    letters = await app.inspector.dead_letters(where, number)
    return render(
        "dead_letters.html",
        await context(
            app,
            session,
            title="Dead letters",
            where=where,
            letters=letters,
            tasks=[t.value for t in TaskName],
            queues=app.inspector.queue_names,
            query=urlencode(where.params()),
            here="/admin/dead-letters?" + urlencode({**where.params(), "page": number}),
        ),
    )


def _dead_id(request: Request) -> int:
    return int(request.path_params["id"])


@page
async def dead_letter(request: Request, app: Console, session: Session) -> Response:
    row = await app.inspector.dead_letter(_dead_id(request))
    return render(
        "dead_letter.html",
        await context(
            app,
            session,
            title=f"Dead letter {row.id}",
            row=row,
            payload=mask_secrets(row.payload),
        ),
    )


@action
async def requeue_dead(request: Request, app: Console, session: Session) -> Response:
    dead_id = _dead_id(request)
    outcome = await app.inspector.requeue_dead(dead_id)
    audit("dead_letter_requeue", str(dead_id), outcome)
    return await done(app, session, outcome, _back(request, f"/admin/dead-letters/{dead_id}"))


@action
async def delete_dead(request: Request, app: Console, session: Session) -> Response:
    dead_id = _dead_id(request)
    outcome = await app.inspector.delete_dead([dead_id])
    audit("dead_letter_delete", str(dead_id), outcome)
    return await done(app, session, outcome, _back(request, "/admin/dead-letters"))


@action
async def requeue_matching(request: Request, app: Console, session: Session) -> Response:
    form = request.state.form
    where = _filter(app, {k: first(form, k) for k in ("task", "queue", "error")})
    outcome = await app.inspector.requeue_matching(where)
    audit("dead_letter_requeue_matching", urlencode(where.params()) or "all", outcome)
    return await done(app, session, outcome, "/admin/dead-letters?" + urlencode(where.params()))


# Signup lookup


@page
async def lookup(request: Request, app: Console, session: Session) -> Response:
    query = request.query_params.get("q")
    found = await app.inspector.lookup(query) if query is not None else None
    return render(
        "lookup.html",
        await context(
            app,
            session,
            title="Signup lookup",
            q=query or "",
            found=found,
        ),
    )


@action
async def resend(request: Request, app: Console, session: Session) -> Response:
    """A new verification email through the API's resend path, with its per-address limit."""
    query = first(request.state.form, "q")
    found = await app.inspector.lookup(query)
    email = found.user.email
    target = found.user.username
    back = "/admin/lookup?" + urlencode({"q": query})
    try:
        await app.state.limits.hit("resend_email", email.lower())
    except ResourceExhausted as exc:
        audit("verify_email_resend", target, Outcome(str(exc), changed=False))
        raise
    job = await app.state.signup.resend_verify_email(email, current_request_id())
    if job is None:
        outcome = Outcome(f"{target} is verified already: no email sent", changed=False)
    else:
        await app.state.signup.dispatch(job)
        outcome = Outcome(f"a new verification email is queued for {target} (job {job.job_id})")
    audit("verify_email_resend", target, outcome)
    return await done(app, session, outcome, back)
