"""The Starlette application factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from sqlalchemy.exc import DBAPIError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import BaseRoute

from verimail_api import admin, console
from verimail_api.errors import DEPENDENCY_ERRORS, handle_exception, handle_http_exception
from verimail_api.headers import SecurityHeadersMiddleware
from verimail_api.limits import RequestLimitsMiddleware
from verimail_api.metrics import EventLoopLagSampler
from verimail_api.middleware import (
    ForwardedSchemeMiddleware,
    RequestContextMiddleware,
    UnexpectedErrorMiddleware,
)
from verimail_api.ratelimit import trusted_networks
from verimail_api.routes import routes
from verimail_api.state import State
from verimail_shared.errors import VerimailError
from verimail_shared.settings import Settings, get_settings

log = structlog.get_logger(__name__)


def middleware(settings: Settings) -> list[Middleware]:
    stack = [
        Middleware(RequestContextMiddleware),
        Middleware(ForwardedSchemeMiddleware, trusted=trusted_networks(settings)),
        Middleware(SecurityHeadersMiddleware),
        Middleware(RequestLimitsMiddleware),
    ]
    if settings.cors_origins:  # off unless asked for: the API serves no browser app itself
        stack.append(
            Middleware(
                CORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST"],
                allow_headers=["Content-Type", "Authorization", "X-Request-ID"],
                expose_headers=["X-Request-ID", "Retry-After"],
                max_age=600,
            )
        )
    return [*stack, Middleware(UnexpectedErrorMiddleware)]  # innermost


def operator_routes(settings: Settings) -> list[BaseRoute]:
    """/v1/admin/* (404 without ADMIN_TOKEN) and, with ADMIN_TOKEN, the console at /admin/."""
    return [*admin.ROUTES, *(console.routes() if settings.admin_token else [])]


def create_app(settings: Settings | None = None, *, admin_only: bool = False) -> Starlette:
    """The API; with ADMIN_PORT set, the operator routes are served by a second app of their
    own (`admin_only`), and the API's app leaves them out."""
    settings = settings or get_settings()
    if admin_only:
        app_routes: list[BaseRoute] = operator_routes(settings)
    elif settings.admin_port is not None:
        app_routes = [*routes(settings)]
    else:
        app_routes = [*routes(settings), *operator_routes(settings)]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state = State.open(settings)
        app.state.verimail = state
        lag = EventLoopLagSampler()
        lag.start()
        loop = type(asyncio.get_running_loop())
        log.info("api_started", event_loop=f"{loop.__module__}.{loop.__qualname__}")
        try:
            yield
        finally:
            await lag.stop()
            await state.close()

    return Starlette(
        routes=app_routes,
        middleware=middleware(settings),
        exception_handlers={
            HTTPException: handle_http_exception,
            VerimailError: handle_exception,
            DBAPIError: handle_exception,
            **dict.fromkeys(DEPENDENCY_ERRORS, handle_exception),
            # A bug in the middleware itself; UnexpectedErrorMiddleware answers the rest.
            Exception: handle_exception,
        },
        lifespan=lifespan,
    )
