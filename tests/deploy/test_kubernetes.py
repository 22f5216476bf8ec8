"""deploy/k8s: every manifest valid for a named Kubernetes version, offline; CRDs checked by hand.

`kubectl kustomize` (kustomize built into kubectl, no cluster needed) renders the example
overlay; kubernetes-validate checks each object against that version's OpenAPI schemas, strictly
(unknown fields are errors). KEDA and Prometheus Operator objects have no schema there, so
their required fields and their references to our objects are checked here.
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support.binaries import require
from verimail_shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAY = K8S / "overlays" / "example"
KUBERNETES_VERSION = "1.33.0"
CUSTOM_KINDS = {"ScaledObject", "ServiceMonitor", "PodMonitor"}


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def manifest_files() -> Iterator[Path]:
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name != "kustomization.yaml":
            yield path


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    kubectl = require("kubectl")
    result = subprocess.run(
        [kubectl, "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return documents(result.stdout)


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(only)


@pytest.mark.parametrize("path", list(manifest_files()), ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_file_is_valid_for_the_named_kubernetes_version(path: Path) -> None:
    for obj in documents(path.read_text()):
        if obj["kind"] in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_the_example_overlay_renders_valid_objects(rendered: list[dict[str, Any]]) -> None:
    kinds = {obj["kind"] for obj in rendered}
    assert {"Deployment", "Job", "Service", "ConfigMap", "PodDisruptionBudget"} <= kinds
    assert {"HorizontalPodAutoscaler", *CUSTOM_KINDS} <= kinds
    for obj in rendered:
        assert obj["metadata"].get("namespace", "verimail") == "verimail"
        if obj["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_no_real_secret_is_rendered(rendered: list[dict[str, Any]]) -> None:
    assert not by_kind(rendered, "Secret")
    (example,) = documents((OVERLAY / "secret.example.yaml").read_text())
    assert all("CHANGE-ME" in value or "@" not in value for value in example["stringData"].values())
    assert example["stringData"]["SMTP_PASSWORD"] == "CHANGE-ME"


def test_pods_run_unprivileged_with_probes_and_resources(rendered: list[dict[str, Any]]) -> None:
    pod_specs = [d["spec"]["template"]["spec"] for d in by_kind(rendered, "Deployment").values()]
    pod_specs += [j["spec"]["template"]["spec"] for j in by_kind(rendered, "Job").values()]
    for spec in pod_specs:
        assert spec["securityContext"]["runAsNonRoot"] is True
        for each in spec["containers"]:
            security = each["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            assert {"cpu", "memory"} <= each["resources"]["requests"].keys()
            assert {"cpu", "memory"} <= each["resources"]["limits"].keys()
    for deployment in by_kind(rendered, "Deployment").values():
        assert {"readinessProbe", "livenessProbe"} <= container(deployment).keys()


def test_workers_get_longer_to_stop_than_their_shutdown_grace(
    rendered: list[dict[str, Any]],
) -> None:
    worker = by_kind(rendered, "Deployment")["verimail-worker"]
    config = by_kind(rendered, "ConfigMap")["verimail-config"]["data"]
    default = Settings.model_fields["worker_shutdown_grace_seconds"].default
    grace = int(config.get("WORKER_SHUTDOWN_GRACE_SECONDS", default))
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace + 5
    assert config["WORKER_METRICS_HOST"] == "0.0.0.0"  # noqa: S104 (scraped from other pods)
    assert container(worker)["livenessProbe"]["exec"]["command"] == ["verimail-worker", "--check"]


def test_every_configmap_key_is_a_setting(rendered: list[dict[str, Any]]) -> None:
    config = by_kind(rendered, "ConfigMap")["verimail-config"]["data"]
    assert {key.lower() for key in config} <= Settings.model_fields.keys()


def test_api_scales_on_cpu_and_keeps_a_pod_through_disruptions(
    rendered: list[dict[str, Any]],
) -> None:
    hpa = by_kind(rendered, "HorizontalPodAutoscaler")["verimail-api"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "verimail-api"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "replicas" not in by_kind(rendered, "Deployment")["verimail-api"]["spec"]
    budgets = by_kind(rendered, "PodDisruptionBudget")
    assert set(budgets) == {"verimail-api", "verimail-worker"}


def test_keda_scales_the_worker_deployment_on_queue_depth(rendered: list[dict[str, Any]]) -> None:
    (scaled,) = by_kind(rendered, "ScaledObject").values()
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] in by_kind(rendered, "Deployment")
    assert spec["scaleTargetRef"]["name"] == "verimail-worker"
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    metadata = trigger["metadata"]
    assert {"serverAddress", "query", "threshold"} <= metadata.keys()
    assert metadata["serverAddress"].startswith("http")
    assert "max by (queue) (verimail_queue_depth" in metadata["query"]
    assert float(metadata["threshold"]) > 0
    assert all(isinstance(value, str) for value in metadata.values())  # KEDA wants strings


def test_the_hpa_alternative_is_a_valid_hpa_once_uncommented() -> None:
    text = (K8S / "components" / "keda" / "hpa-without-keda.yaml").read_text()
    assert not documents(text)  # commented out: never applied by accident
    body = "\n".join(line.removeprefix("# ") for line in text.splitlines() if line.startswith("# "))
    hpa = documents(body[body.index("apiVersion") :])[0]
    kubernetes_validate.validate(hpa, KUBERNETES_VERSION, strict=True)
    assert hpa["spec"]["metrics"][0]["type"] == "External"


def test_monitors_select_our_pods_on_named_ports(rendered: list[dict[str, Any]]) -> None:
    services = by_kind(rendered, "Service")
    deployments = by_kind(rendered, "Deployment")
    (service_monitor,) = by_kind(rendered, "ServiceMonitor").values()
    assert service_monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selected = service_monitor["spec"]["selector"]["matchLabels"]
    (service,) = [
        s for s in services.values() if selected.items() <= s["metadata"]["labels"].items()
    ]
    port_names = {port["name"] for port in service["spec"]["ports"]}
    assert service_monitor["spec"]["endpoints"]
    assert {e["port"] for e in service_monitor["spec"]["endpoints"]} <= port_names

    (pod_monitor,) = by_kind(rendered, "PodMonitor").values()
    selected = pod_monitor["spec"]["selector"]["matchLabels"]
    (worker,) = [
        d
        for d in deployments.values()
        if selected.items() <= d["spec"]["template"]["metadata"]["labels"].items()
    ]
    container_ports = {port["name"] for port in container(worker)["ports"]}
    assert pod_monitor["spec"]["podMetricsEndpoints"]
    assert {e["port"] for e in pod_monitor["spec"]["podMetricsEndpoints"]} <= container_ports
    # The alert rules match job="verimail-api" / job="verimail-worker".
    for monitor in (service_monitor, pod_monitor):
        assert monitor["spec"]["jobLabel"] == "app.kubernetes.io/name"


def test_pods_carry_plain_scrape_annotations(rendered: list[dict[str, Any]]) -> None:
    for deployment in by_kind(rendered, "Deployment").values():
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        port = int(annotations["prometheus.io/port"])
        assert annotations["prometheus.io/scrape"] == "true"
        assert port in {p["containerPort"] for p in container(deployment)["ports"]}


def test_the_configmap_trusts_forwarded_for_from_the_pod_network_only() -> None:
    (config,) = documents((K8S / "base" / "configmap.yaml").read_text())
    settings = Settings(_env_file=None, trusted_proxies=config["data"]["TRUSTED_PROXIES"])
    networks = [ipaddress.ip_network(proxy) for proxy in settings.trusted_proxies]
    assert networks and all(network.is_private for network in networks)
