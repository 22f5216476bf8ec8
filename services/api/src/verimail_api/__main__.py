"""`verimail-api`: serve the API with uvicorn."""

from __future__ import annotations

import argparse
import asyncio

import prometheus_client
import uvicorn
from starlette.applications import Starlette

from verimail_api.app import create_app
from verimail_shared.logs import configure_logging
from verimail_shared.settings import get_settings


def main() -> None:
    parser = argparse.ArgumentParser(prog="verimail-api", description=__doc__)
    parser.parse_args()
    settings = get_settings()
    configure_logging(settings)
    if settings.api_metrics_port is not None:
        prometheus_client.start_http_server(settings.api_metrics_port, settings.api_metrics_host)
    servers = [server(create_app(settings), settings.api_host, settings.api_port)]
    if settings.admin_port is not None:  # the console and /v1/admin/* on their own port
        servers.append(
            server(create_app(settings, admin_only=True), settings.admin_host, settings.admin_port)
        )
    asyncio.run(serve(servers))


def server(app: Starlette, host: str, port: int) -> uvicorn.Server:
    return uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,  # keep the structlog configuration
            access_log=False,  # RequestContextMiddleware logs every request, with its request id
            proxy_headers=False,
            server_header=False,  # no product name in answers (ASVS 14.3.3)
            timeout_graceful_shutdown=10,
        )
    )


async def serve(servers: list[uvicorn.Server]) -> None:
    """Run every server until one stops (a signal stops them all: uvicorn's handler is shared
    by the process, and each server watches its own exit flag)."""
    tasks = [asyncio.create_task(s.serve()) for s in servers]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for s in servers:
        s.should_exit = True
    await asyncio.gather(*tasks)


if __name__ == "__main__":
    main()
