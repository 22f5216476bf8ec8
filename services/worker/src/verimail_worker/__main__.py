"""`verimail-worker`: run a worker, or with `--check` tell whether this host's worker is healthy."""

from __future__ import annotations

import argparse
import asyncio
import sys

import prometheus_client

from verimail_shared import cli
from verimail_shared.db import check_database
from verimail_shared.logs import configure_logging
from verimail_worker.worker import check_health, create_worker


def check() -> int:
    settings = cli.load_settings()
    configure_logging(settings)
    try:
        healthy = asyncio.run(check_health(settings))
    except Exception as exc:  # unreachable Redis means unhealthy, not a traceback
        print(f"unhealthy: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print("healthy" if healthy else "unhealthy: no heartbeat")
    return 0 if healthy else 1


def work() -> None:
    settings = cli.load_settings()
    configure_logging(settings)
    check_database(settings.database_url)
    prometheus_client.start_http_server(settings.worker_metrics_port, settings.worker_metrics_host)
    create_worker(settings).run()  # on uvloop


def main() -> None:
    parser = argparse.ArgumentParser(prog="verimail-worker", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="exit 0 if this host's worker is healthy, else 1"
    )
    args = parser.parse_args()
    cli.run(parser.prog, check if args.check else work)


if __name__ == "__main__":
    main()
