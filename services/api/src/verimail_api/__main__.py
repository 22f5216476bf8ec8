"""`verimail-api`: serve the API with uvicorn."""

from __future__ import annotations

import argparse
import asyncio

import prometheus_client
import structlog
import uvicorn
import uvloop
from starlette.applications import Starlette

from verimail_api.app import create_app
from verimail_api.server import BoundedHttpToolsProtocol
from verimail_shared import cli
from verimail_shared.db import check_database
from verimail_shared.logs import configure_logging


def run() -> None:
    settings = cli.load_settings()
    configure_logging(settings)
    check_database(settings.database_url)
    if settings.api_metrics_port is not None:
        prometheus_client.start_http_server(settings.api_metrics_port, settings.api_metrics_host)
    servers = [server(create_app(settings), settings.api_host, settings.api_port)]
    if settings.admin_port is not None:  # the console and /v1/admin/* on their own port
        servers.append(
            server(create_app(settings, admin_only=True), settings.admin_host, settings.admin_port)
        )
    config = servers[0].config
    structlog.get_logger("verimail_api").info(
        "api_serving",
        http=config.http_protocol_class.__qualname__,
        loop=config.loop,
        port=settings.api_port,
        admin_port=settings.admin_port,
    )
    uvloop.run(serve(servers))


def server(app: Starlette, host: str, port: int) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        # Named, not "auto": a missing uvloop or httptools fails at start instead of running
        # silently on the slower asyncio loop and h11 parser (decision 050).
        loop="uvloop",
        http=BoundedHttpToolsProtocol,
        log_config=None,  # keep the structlog configuration
        access_log=False,  # RequestContextMiddleware logs every request, with its request id
        proxy_headers=False,
        server_header=False,  # no product name in answers (ASVS 14.3.3)
        timeout_graceful_shutdown=10,
    )
    config.load()
    return uvicorn.Server(config)


async def serve(servers: list[uvicorn.Server]) -> None:
    """Run every server until one stops (a signal stops them all: uvicorn's handler is shared
    by the process, and each server watches its own exit flag)."""
    tasks = [asyncio.create_task(s.serve()) for s in servers]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for s in servers:
        s.should_exit = True
    await asyncio.gather(*tasks)


def main() -> None:
    parser = argparse.ArgumentParser(prog="verimail-api", description=__doc__)
    parser.parse_args()
    cli.run(parser.prog, run)


if __name__ == "__main__":
    main()
