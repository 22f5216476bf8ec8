"""The real `verimail-api` and `verimail-worker` commands, as subprocesses, end to end."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict

import httpx
import pytest
from arq.connections import ArqRedis
from prometheus_client.parser import text_string_to_metric_families

from tests.support.polling import eventually
from tests.support.processes import Service, command, running_system, system_env
from tests.support.smtp import SmtpServer
from tests.support.users import new_user
from verimail_shared.embedded import free_port, wait_for_port
from verimail_shared.settings import Settings


class RunningSystem(TypedDict):
    api: Service
    worker: Service
    env: dict[str, str]
    api_port: int
    metrics_port: int


@pytest.fixture
def system(settings: Settings, redis: ArqRedis, tmp_path: Path) -> Iterator[RunningSystem]:
    with running_system(settings, tmp_path) as running:
        yield {
            "api": running.api,
            "worker": running.worker,
            "env": running.env,
            "api_port": running.api_port,
            "metrics_port": running.metrics_port,
        }


def metric(text: str, name: str, labels: dict[str, str]) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


async def test_sign_up_receive_the_email_click_the_link_be_verified(
    system: RunningSystem, smtp_server: SmtpServer
) -> None:
    base = f"http://127.0.0.1:{system['api_port']}"
    body = new_user()
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        # As the README's curl sends it: a JSON body under curl's default form content type.
        created = await client.post(
            "/v1/create_user",
            content=json.dumps(body),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert created.status_code == 200, created.text
        await eventually(
            lambda: smtp_server.to(body["email"]),
            timeout=30,
            message="the verification email did not arrive",
        )
        link = smtp_server.link_to(body["email"])
        assert link.startswith(base)
        verified = await client.get(link)
        assert verified.json() == {"is_verified": True}

        labels = {"task": "send_verify_email", "queue": "critical"}
        worker_metrics = (
            await client.get(f"http://127.0.0.1:{system['metrics_port']}/metrics")
        ).text
        assert metric(worker_metrics, "verimail_worker_tasks_processed_total", labels) == 1
        assert metric(worker_metrics, "verimail_worker_tasks_failed_total", labels) == 0
        api_metrics = (await client.get("/metrics")).text
        assert metric(api_metrics, "verimail_api_tasks_enqueued_total", labels) == 1
        assert (
            metric(
                api_metrics,
                "verimail_api_requests_total",
                {"route": "/v1/create_user", "status": "200"},
            )
            == 1
        )

    # The request id of the signup is on the worker's log lines for its job.
    request_id = created.headers["x-request-id"]
    worker = system["worker"]
    api = system["api"]
    sent = [line for line in worker.lines() if line.get("event") == "verify_email_sent"]
    assert sent and sent[0]["request_id"] == request_id
    # The signup's one INFO line, its access line, names the job it enqueued.
    access = [line for line in api.lines() if line.get("request_id") == request_id]
    assert [line["event"] for line in access] == ["request"]
    assert access[0]["job_id"] == sent[0]["job_id"]
    assert access[0]["username"] == body["username"]
    logs = api.log.read_text() + worker.log.read_text()
    assert body["password"] not in logs


def test_worker_check_is_healthy_only_while_the_worker_runs(system: RunningSystem) -> None:
    env = system["env"]

    def check() -> int:
        return subprocess.run(
            [command("verimail-worker"), "--check"], env=env, capture_output=True, timeout=30
        ).returncode

    assert check() == 0
    worker = system["worker"]
    assert worker.stop() == 0
    assert check() == 1


async def test_api_metrics_port_serves_metrics_there_and_the_api_port_answers_404(
    settings: Settings, redis: ArqRedis, tmp_path: Path
) -> None:
    metrics_host = "127.0.0.2"  # loopback, but not the default: the setting is what binds it
    api_port, metrics_port = free_port(), free_port(metrics_host)
    env = system_env(
        settings,
        api_port,
        free_port(),
        API_METRICS_PORT=str(metrics_port),
        API_METRICS_HOST=metrics_host,
    )
    api = Service("verimail-api", env, tmp_path / "api.log")
    try:
        wait_for_port(api_port, 30)
        wait_for_port(metrics_port, 30, metrics_host)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=10) as client:
            assert (await client.post("/v1/create_user", json=new_user())).status_code == 200
            on_api_port = await client.get("/metrics")
            scraped = await client.get(f"http://{metrics_host}:{metrics_port}/metrics")
    finally:
        api.stop()
    assert on_api_port.status_code == 404
    assert scraped.status_code == 200
    labels = {"route": "/v1/create_user", "status": "200"}
    assert metric(scraped.text, "verimail_api_requests_total", labels) == 1
