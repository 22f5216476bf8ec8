"""`verimail-api`: serve the API with uvicorn."""

from __future__ import annotations

import argparse

import prometheus_client
import structlog
import uvicorn

from verimail_api.app import create_app
from verimail_api.server import BoundedHttpToolsProtocol
from verimail_shared import cli
from verimail_shared.db import check_database
from verimail_shared.logs import configure_logging


def serve() -> None:
    settings = cli.load_settings()
    configure_logging(settings)
    check_database(settings.database_url)
    if settings.api_metrics_port is not None:
        prometheus_client.start_http_server(settings.api_metrics_port, settings.api_metrics_host)
    config = uvicorn.Config(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
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
    structlog.get_logger("verimail_api").info(
        "api_serving",
        http=config.http_protocol_class.__qualname__,
        loop=config.loop,
        port=settings.api_port,
    )
    uvicorn.Server(config).run()


def main() -> None:
    parser = argparse.ArgumentParser(prog="verimail-api", description=__doc__)
    parser.parse_args()
    cli.run(parser.prog, serve)


if __name__ == "__main__":
    main()
