"""ADMIN_PORT: `verimail-api` serves the console and /v1/admin/* on their own port only."""

from __future__ import annotations

from pathlib import Path

import httpx
from arq.connections import ArqRedis

from tests.support.processes import Service, system_env
from verimail_shared.embedded import free_port, wait_for_port
from verimail_shared.settings import Settings


async def test_the_console_answers_on_admin_port_and_not_on_api_port(
    settings: Settings, redis: ArqRedis, tmp_path: Path
) -> None:
    api_port, admin_port = free_port(), free_port()
    env = system_env(
        settings,
        api_port,
        free_port(),
        ADMIN_TOKEN="port-T0ken-0123456789abcdef",
        ADMIN_PORT=str(admin_port),
        ADMIN_HOST="127.0.0.1",
    )
    api = Service("verimail-api", env, tmp_path / "api.log")
    try:
        wait_for_port(api_port, 60)
        wait_for_port(admin_port, 60)
        async with httpx.AsyncClient(timeout=10) as client:
            public = f"http://127.0.0.1:{api_port}"
            operator = f"http://127.0.0.1:{admin_port}"
            assert (await client.get(f"{public}/admin/login")).status_code == 404
            assert (await client.get(f"{public}/v1/admin/queues")).status_code == 404
            assert (await client.get(f"{public}/healthz")).status_code == 200
            login = await client.get(f"{operator}/admin/login")
            assert login.status_code == 200 and 'name="token"' in login.text
            assert (await client.get(f"{operator}/v1/admin/queues")).status_code == 401
            assert (await client.post(f"{operator}/v1/create_user", json={})).status_code == 404
    finally:
        assert api.stop() in (0, -15)
