"""`verimail-api`: serve the API with uvicorn."""

from __future__ import annotations

import argparse

import prometheus_client
import uvicorn

from verimail_api.app import create_app
from verimail_shared import cli
from verimail_shared.db import wait_for_database
from verimail_shared.logs import configure_logging


def serve(wait: float) -> None:
    settings = cli.load_settings()
    configure_logging(settings)
    wait_for_database(settings.database_url, wait)
    if settings.api_metrics_port is not None:
        prometheus_client.start_http_server(settings.api_metrics_port, settings.api_metrics_host)
    uvicorn.run(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,  # keep the structlog configuration
        access_log=False,  # RequestContextMiddleware logs every request, with its request id
        proxy_headers=False,
        server_header=False,  # no product name in answers (ASVS 14.3.3)
        timeout_graceful_shutdown=10,
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="verimail-api", description=__doc__)
    parser.add_argument(
        "--wait", type=float, default=30.0, help="seconds to wait for PostgreSQL at start-up"
    )
    args = parser.parse_args()
    cli.run(parser.prog, lambda: serve(args.wait))


if __name__ == "__main__":
    main()
