"""docker-compose.yml against the Compose Specification's JSON schema, and what it promises.

No Docker engine here: check-jsonschema validates the file with the compose-spec schema it
vendors, and the rest reads the file for the properties the README and docs/deploy.md claim.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.processes import command
from verimail_shared.embedded import valkey_server_path
from verimail_shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def test_compose_file_validates_against_the_compose_spec_schema() -> None:
    result = subprocess.run(
        [command("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_rejects_a_broken_compose_file(tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text("services:\n  api:\n    image: x\n    restart: sometimes\n    portz: [1]\n")
    result = subprocess.run(
        [command("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1


def test_every_service_the_readme_mentions_exists(compose: dict[str, Any]) -> None:
    readme = (ROOT / "README.md").read_text()
    line = next(line for line in readme.splitlines() if line.startswith("Compose services:"))
    mentioned = set(re.findall(r"`([a-z]+)`", line))
    assert mentioned == set(services(compose))


def test_workers_can_be_scaled(compose: dict[str, Any]) -> None:
    worker = services(compose)["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker  # a fixed host port would clash between replicas
    env = worker["environment"]
    assert env["WORKER_METRICS_HOST"] == "0.0.0.0"  # noqa: S104 (Prometheus scrapes it)
    default = Settings.model_fields["worker_shutdown_grace_seconds"].default
    grace = int(env.get("WORKER_SHUTDOWN_GRACE_SECONDS", default))
    assert int(worker["stop_grace_period"].removesuffix("s")) > grace


def test_prometheus_discovers_every_replica_by_dns(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    worker_sd = jobs["verimail-worker"]["dns_sd_configs"][0]
    assert worker_sd["names"] == ["worker"] and worker_sd["type"] == "A"
    assert worker_sd["port"] == int(
        services(compose)["worker"]["environment"]["WORKER_METRICS_PORT"]
    )
    assert jobs["verimail-api"]["dns_sd_configs"][0]["names"] == ["api"]


def test_api_and_worker_wait_for_the_migration(compose: dict[str, Any]) -> None:
    all_services = services(compose)
    assert all_services["migrate"]["entrypoint"] == ["verimail-migrate", "--create-database"]
    assert all_services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("api", "worker"):
        depends = all_services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        assert depends["redis"]["condition"] == "service_healthy"


def test_datastores_are_pinned_persistent_and_checked(compose: dict[str, Any]) -> None:
    all_services = services(compose)
    postgres, redis = all_services["postgres"], all_services["redis"]
    assert re.fullmatch(r"postgres:\d+(-[a-z]+)?", postgres["image"])
    assert re.fullmatch(r"valkey/valkey:\d+\.\d+(-[a-z]+)?", redis["image"])
    for service in (postgres, redis):
        assert service["healthcheck"]["test"]
        assert service["volumes"][0].split(":")[0] in compose["volumes"]
    flags = " ".join(redis["command"])
    for setting in ("--appendonly yes", "--appendfsync everysec", "--maxmemory-policy noeviction"):
        assert setting in flags


def test_grafana_is_provisioned_from_files_for_anonymous_viewers(compose: dict[str, Any]) -> None:
    grafana = services(compose)["grafana"]
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    for volume in grafana["volumes"] + services(compose)["prometheus"]["volumes"]:
        source = volume.split(":")[0]
        if source.startswith("./"):
            assert (ROOT / source).exists(), source
    datasource = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert {"mailpit", "prometheus"} <= set(services(compose))


def embedded_valkey_major() -> str:
    version = subprocess.run(
        [str(valkey_server_path()), "--version"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"v=(\d+)\.", version)
    assert match, version
    return match.group(1)


def test_compose_and_the_deploy_docs_name_the_server_major_the_tests_run(
    compose: dict[str, Any],
) -> None:
    major = embedded_valkey_major()
    image = services(compose)["redis"]["image"]
    assert image.split(":")[1].split(".")[0] == major, image
    assert f"Valkey {major}" in (ROOT / "docs" / "deploy.md").read_text()


def test_the_api_trusts_forwarded_for_only_from_the_compose_networks(
    compose: dict[str, Any],
) -> None:
    environment = services(compose)["api"]["environment"]
    settings = Settings(_env_file=None, trusted_proxies=environment["TRUSTED_PROXIES"])
    networks = [ipaddress.ip_network(proxy) for proxy in settings.trusted_proxies]
    assert networks and all(network.is_private for network in networks)
