"""The Kubernetes manifests of every overlay and the Dockerfiles: they render,
they are valid against the Kubernetes schemas (offline), and checkov finds
nothing that is not waived with a reason."""
from __future__ import annotations

import json
import re
import subprocess

import kubernetes_validate
import pytest
import yaml

from visage_deploy import kube
from visage_deploy.settings import AKS_DIR, OVERLAYS, SERVICES

from tests.conftest import missing_prerequisite
from tests.deploy.conftest import CHECKOV

K8S_VERSION = "1.33.0"  # AKS's supported line at the time of writing


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_valid_against_the_kubernetes_schema(rendered, overlay):
    for obj in rendered[overlay]:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        assert obj["kind"] in kube.KINDS, f"{obj['kind']} has no API path in visage_deploy.kube.KINDS"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_service_has_grpc_probes_limits_and_hardening(rendered, overlay):
    deployments = {obj["metadata"]["name"]: obj for obj in rendered[overlay] if obj["kind"] == "Deployment"}
    assert sorted(deployments) == sorted(f"visage-{name}" for name in SERVICES)
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert pod["securityContext"]["runAsNonRoot"] and not pod["automountServiceAccountToken"]
        assert container["securityContext"]["readOnlyRootFilesystem"]
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert {"cpu", "memory"} <= set(container["resources"]["limits"])
        if name != "visage-gateway":
            assert container["readinessProbe"]["grpc"]["port"] == container["ports"][0]["containerPort"]
            assert container["livenessProbe"]["grpc"]["port"] == container["ports"][0]["containerPort"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_trainer_autoscaled_ingest_and_classifier_public_gateway(rendered, overlay):
    objects = {(obj["kind"], obj["metadata"]["name"]): obj for obj in rendered[overlay]}
    trainer = objects[("Deployment", "visage-trainer")]["spec"]
    assert trainer["replicas"] == 1 and trainer["strategy"]["type"] == "Recreate"
    assert ("HorizontalPodAutoscaler", "visage-trainer") not in objects
    for name in ("visage-ingest", "visage-classifier"):
        assert objects[("HorizontalPodAutoscaler", name)]["spec"]["scaleTargetRef"]["name"] == name
        assert "replicas" not in objects[("Deployment", name)]["spec"]  # the HPA owns it
        assert ("PodDisruptionBudget", name) in objects
    assert objects[("Service", "visage-gateway")]["spec"]["type"] == "LoadBalancer"
    gateway = objects[("Deployment", "visage-gateway")]["spec"]["template"]["spec"]["containers"][0]["resources"]
    if overlay == "prod":  # Guaranteed, one whole CPU: a core of its own under the static CPU manager
        assert gateway["requests"] == gateway["limits"] and gateway["limits"]["cpu"] == "1"
    cassandra = objects[("ConfigMap", "visage-cassandra")]["data"]
    assert cassandra["VISAGE_CASSANDRA_PORT"] == ("10350" if overlay == "prod" else "9042")
    assert cassandra["VISAGE_CASSANDRA_TLS"] == ("true" if overlay == "prod" else "false")
    assert objects[("ConfigMap", "visage-config")]["data"]["VISAGE_STORE"] == "cassandra"


def _checkov_failures(directory, framework: str) -> list[tuple[str, str]]:
    """(check, resource) of every failed check; asserts the scan really checked something."""
    result = subprocess.run([str(CHECKOV), "-d", str(directory), "--framework", framework, "-o", "json",
                             "--quiet", "--skip-download"], capture_output=True, text=True, timeout=600)
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    assert sum(item["summary"]["passed"] for item in reports) > 20, f"checkov checked nothing: {result.stderr[-500:]}"
    return [(failed["check_id"], failed["resource"] if framework != "dockerfile" else failed["repo_file_path"])
            for item in reports for failed in item.get("results", {}).get("failed_checks", [])]


def test_checkov_finds_nothing_unwaived(rendered, tmp_path):
    if not CHECKOV.exists():
        missing_prerequisite("checkov is not installed", "make deploy-tools")
    waivers = yaml.safe_load((AKS_DIR / "checkov-waivers.yaml").read_text())["waivers"]
    assert all(waiver["reason"].strip() for waiver in waivers)
    for overlay, objects in rendered.items():
        (tmp_path / f"{overlay}.yaml").write_text(yaml.safe_dump_all(objects))
    failures = _checkov_failures(tmp_path, "kubernetes") + _checkov_failures(AKS_DIR / "docker", "dockerfile")

    def waived(check: str, resource: str) -> bool:
        return any(w["check"] == check and re.fullmatch(w["resource"], resource) for w in waivers)

    unwaived = sorted({failure for failure in failures if not waived(*failure)})
    assert unwaived == [], f"checkov findings without a waiver in deploy/aks/checkov-waivers.yaml: {unwaived}"
    stale = [w["check"] for w in waivers
             if not any(check == w["check"] and re.fullmatch(w["resource"], resource) for check, resource in failures)]
    assert stale == [], f"waivers that match no finding any more (remove them): {stale}"
