"""Prometheus and Grafana with real binaries: promtool on the config, rules and their unit tests;
a real Prometheus server answering every dashboard query and scraping a running API and worker.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from arq.connections import ArqRedis

from tests.support.binaries import require
from tests.support.polling import eventually
from tests.support.processes import Process, Service
from tests.support.smtp import SmtpServer
from tests.support.users import new_user
from verimail_shared.embedded import free_port, wait_for_port
from verimail_shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "verimail.json"
# What the dashboard must show, as metric names its queries use.
DASHBOARD_METRICS = {
    "verimail_worker_tasks_processed_total",
    "verimail_worker_tasks_retried_total",
    "verimail_worker_tasks_failed_total",
    "verimail_queue_depth",
    "verimail_dead_tasks",
    "verimail_worker_tasks_in_progress",
    "verimail_worker_task_duration_seconds_bucket",
    "verimail_worker_task_lateness_seconds_bucket",
    "verimail_api_requests_total",
    "verimail_api_request_duration_seconds_bucket",
    'up{job="verimail-worker"}',
}


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require("promtool"), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PROMETHEUS_DIR,
    )


def test_promtool_accepts_the_compose_scrape_config() -> None:
    result = promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_annotation_scrape_config_in_the_deploy_guide(tmp_path: Path) -> None:
    guide = (ROOT / "docs" / "deploy.md").read_text()
    section = guide.split("\n### Scraping\n", 1)[1].split("\n## ", 1)[0]
    config = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    (pods,) = config["scrape_configs"]
    job = next(rule for rule in pods["relabel_configs"] if rule.get("target_label") == "job")
    assert job["regex"] == "(verimail-api|verimail-worker)"
    # Debian's promtool is built without Kubernetes discovery: check the rules on static targets.
    assert pods.pop("kubernetes_sd_configs") == [{"role": "pod"}]
    pods["static_configs"] = [{"targets": ["10.0.0.1:8000"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [require("promtool"), "check", "config", "prometheus.yml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_alert_rules() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 10 rules found" in result.stdout


def test_every_alert_fires_in_the_promtool_unit_tests() -> None:
    result = promtool("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts.test.yml").read_text())
    fired = {
        case["alertname"]
        for test in tests["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert fired == alerts
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert len(rule["annotations"]["runbook"]) > 80, rule["alert"]


class Prometheus:
    """The Debian `prometheus` server on a free loopback port, with a config of the test's own."""

    def __init__(self, directory: Path, api_port: int, worker_port: int) -> None:
        self.port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(PROMETHEUS_DIR / "alerts.yml")],
            "scrape_configs": [
                {
                    "job_name": "verimail-api",
                    "static_configs": [{"targets": [f"127.0.0.1:{api_port}"]}],
                },
                {
                    "job_name": "verimail-worker",
                    "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}],
                },
            ],
        }
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.process = Process(
            [
                require("prometheus"),
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            directory / "prometheus.log",
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def query(self, expr: str) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=5)
        body: dict[str, Any] = response.json()
        return body

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except httpx.TransportError:
            return False


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    return {"api": free_port(), "worker": free_port()}


@pytest.fixture(scope="module")
async def prometheus(
    tmp_path_factory: pytest.TempPathFactory, ports: dict[str, int]
) -> AsyncIterator[Prometheus]:
    server = Prometheus(tmp_path_factory.mktemp("prometheus"), ports["api"], ports["worker"])
    try:
        await eventually(server.ready, timeout=30, interval=0.1, message="prometheus not ready")
        yield server
    finally:
        server.process.stop(15)


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


async def test_every_dashboard_query_is_accepted_by_prometheus(prometheus: Prometheus) -> None:
    queries = dashboard_queries()
    for title, expr in queries:
        # Grafana substitutes its interval variables before it sends a query.
        answer = prometheus.query(expr.replace("$__rate_interval", "1m"))
        assert answer["status"] == "success", (title, expr, answer.get("error"))
    used = " ".join(expr for _, expr in queries)
    assert all(metric in used for metric in DASHBOARD_METRICS)


async def test_prometheus_scrapes_the_tasks_of_real_signups(
    prometheus: Prometheus,
    ports: dict[str, int],
    settings: Settings,
    redis: ArqRedis,
    smtp_server: SmtpServer,
    tmp_path: Path,
) -> None:
    env = {
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "SMTP_HOST": settings.smtp_host,
        "SMTP_PORT": str(settings.smtp_port),
        "API_PORT": str(ports["api"]),
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{ports['api']}",
        "WORKER_METRICS_PORT": str(ports["worker"]),
        "WORKER_POLL_DELAY_SECONDS": "0.05",
        "VERIFY_EMAIL_DEFER_SECONDS": "0",
    }
    api = Service("verimail-api", {**os.environ, **env}, tmp_path / "api.log")
    worker = Service("verimail-worker", {**os.environ, **env}, tmp_path / "worker.log")
    try:
        wait_for_port(ports["api"], 30)
        wait_for_port(ports["worker"], 30)
        signups = 3
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports['api']}") as client:
            for _ in range(signups):
                response = await client.post("/v1/create_user", json=new_user(), timeout=10)
                assert response.status_code == 200, response.text
            api_metrics = (await client.get("/metrics")).text
            worker_metrics = (await client.get(f"http://127.0.0.1:{ports['worker']}/metrics")).text

        def counted(expression: str) -> bool:
            result = prometheus.query(expression)["data"]["result"]
            return bool(result) and float(result[0]["value"][1]) == signups

        # The API and the worker are scraped on their own schedules: wait for each.
        await eventually(
            lambda: counted("sum(verimail_worker_tasks_processed_total)"),
            timeout=30,
            interval=0.2,
            message="prometheus saw no tasks",
        )
        await eventually(
            lambda: counted("sum(verimail_api_tasks_enqueued_total)"),
            timeout=30,
            interval=0.2,
            message="prometheus saw no enqueues",
        )
        up = prometheus.query("up")["data"]["result"]
        assert {r["metric"]["job"]: r["value"][1] for r in up} == {
            "verimail-api": "1",
            "verimail-worker": "1",
        }
    finally:
        api.stop()
        worker.stop()

    for text in (api_metrics, worker_metrics):
        result = promtool("check", "metrics", stdin=text)
        assert result.returncode == 0, result.stdout + result.stderr
