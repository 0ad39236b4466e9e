"""Kubernetes objects: render the kustomize overlay, fill in what only the
deploy knows (image tags, database endpoint, secrets), diff against the
cluster and server-side-apply only what differs.

Objects are addressed by plain REST paths (no discovery round-trips), so the
same code runs against a real API server and the tests' local one."""
from __future__ import annotations

import base64
import copy
import hashlib
import json
import subprocess
import time
from collections.abc import Callable

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from visage_deploy.diff import Change, change_for
from visage_deploy.errors import DeployError
from visage_deploy.settings import AKS_DIR, DeploySettings

FIELD_MANAGER = "visage-deploy"
# kind → (API group path, plural). Every kind the overlays use is listed; a new
# kind fails loudly in tests (see tests/deploy/test_manifests.py).
KINDS = {
    "Namespace": ("/api/v1", "namespaces"), "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "ConfigMap": ("/api/v1", "configmaps"), "Secret": ("/api/v1", "secrets"), "Service": ("/api/v1", "services"),
    "Deployment": ("/apis/apps/v1", "deployments"), "StatefulSet": ("/apis/apps/v1", "statefulsets"),
    "Job": ("/apis/batch/v1", "jobs"),
    "HorizontalPodAutoscaler": ("/apis/autoscaling/v2", "horizontalpodautoscalers"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"),
}
# Namespaces and configuration first, workloads next, the data loader last.
APPLY_ORDER = ["Namespace", "ServiceAccount", "ConfigMap", "Secret", "NetworkPolicy", "Service", "StatefulSet",
               "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Job"]
CONFIG_HASH = "visage.io/config-hash"
SECRET_NAME = "visage-secrets"
GATEWAY_SERVICE = "visage-gateway"

Step = Callable[[str], None]


def render(overlay: str, kustomize: str) -> list[dict]:
    try:
        out = subprocess.run([str(kustomize), "build", str(AKS_DIR / "k8s" / "overlays" / overlay)],
                             capture_output=True, text=True, check=True).stdout
    except FileNotFoundError as error:
        raise DeployError(f"kustomize not found at {kustomize}: run `make kustomize`") from error
    except subprocess.CalledProcessError as error:
        raise DeployError(f"kustomize build {overlay} failed: {error.stderr.strip()}") from error
    return [doc for doc in yaml.safe_load_all(out) if doc]


def name_of(obj: dict) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else meta["name"]


def customize(objects: list[dict], settings: DeploySettings, images: dict[str, str]) -> list[dict]:
    """The rendered overlay plus this deploy's images, endpoint and secrets."""
    objects = copy.deepcopy(objects)
    by_name = {(obj["kind"], obj["metadata"]["name"]): obj for obj in objects}
    for key, value in settings.cassandra_env.items():
        target = "visage-cassandra" if key.startswith("VISAGE_CASSANDRA_") else "visage-config"
        by_name[("ConfigMap", target)]["data"][key] = value
    if settings.overlay == "prod" and "VISAGE_CASSANDRA_HOSTS" not in settings.cassandra_env:
        raise DeployError("the prod overlay needs the managed Cassandra's address: set VISAGE_CASSANDRA_HOSTS "
                          "(and VISAGE_CASSANDRA_USERNAME / VISAGE_CASSANDRA_PASSWORD)")
    if settings.secret_env:
        objects.append({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                        "metadata": {"name": SECRET_NAME, "namespace": settings.namespace},
                        "data": {key: base64.b64encode(value.encode()).decode()
                                 for key, value in sorted(settings.secret_env.items())}})
    config_hash = _config_hash(objects)
    for obj in objects:
        template = obj.get("spec", {}).get("template")
        if not template:
            continue
        for container in template["spec"]["containers"]:
            image = container["image"].split(":")[0].removeprefix("visage-")
            if image in images:
                container["image"] = images[image]
        if obj["kind"] != "Job":  # a Job's template is immutable; it uses config only once anyway
            template["metadata"].setdefault("annotations", {})[CONFIG_HASH] = config_hash
    return sorted(objects, key=lambda obj: APPLY_ORDER.index(obj["kind"]))


def _config_hash(objects: list[dict]) -> str:
    config = [obj.get("data") for obj in objects if obj["kind"] in ("ConfigMap", "Secret")]
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


class Cluster:
    """Just enough of the Kubernetes API: get, server-side apply, delete."""

    def __init__(self, api: k8s.ApiClient):
        self.api = api

    @classmethod
    def from_kubeconfig(cls, kubeconfig: bytes) -> "Cluster":
        return cls(k8s_config.new_client_from_config_dict(yaml.safe_load(kubeconfig)))

    def _path(self, obj: dict) -> str:
        if obj["kind"] not in KINDS:
            raise DeployError(f"no API path known for kind {obj['kind']}")
        prefix, plural = KINDS[obj["kind"]]
        namespace = obj["metadata"].get("namespace")
        scope = f"/namespaces/{namespace}" if namespace else ""
        return f"{prefix}{scope}/{plural}/{obj['metadata']['name']}"

    def _request(self, method: str, path: str, body: str | None = None, query: list | None = None,
                 content_type: str = "application/json") -> tuple[int, dict]:
        request = self.api.param_serialize(method, path, query_params=query or [], body=body,
                                           header_params={"Content-Type": content_type, "Accept": "application/json"},
                                           auth_settings=["BearerToken"])
        response = self.api.call_api(*request)
        response.read()
        data = json.loads(response.data or b"{}")
        if response.status >= 400 and response.status != 404:
            raise DeployError(f"Kubernetes refused {method} {path}: {response.status} {data.get('message', data)}")
        return response.status, data

    def get(self, obj: dict) -> dict | None:
        status, data = self._request("GET", self._path(obj))
        return None if status == 404 else data

    def apply(self, obj: dict) -> dict:
        query = [("fieldManager", FIELD_MANAGER), ("force", "true")]
        return self._request("PATCH", self._path(obj), json.dumps(obj), query, "application/apply-patch+yaml")[1]

    def delete(self, obj: dict) -> None:
        body = json.dumps({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"})
        self._request("DELETE", self._path(obj), body)
        for _ in range(60):  # wait until it is really gone, so the re-create does not collide
            if self.get(obj) is None:
                return
            time.sleep(1)
        raise DeployError(f"{obj['kind']} {name_of(obj)} was not deleted within a minute")


def plan(cluster: Cluster | None, objects: list[dict]) -> list[tuple[dict, Change]]:
    """Each object with its change; with no cluster (no credentials) all are creates."""
    planned = []
    for obj in objects:
        live = cluster.get(obj) if cluster else None
        planned.append((obj, change_for(obj["kind"], name_of(obj), _comparable(obj), live)))
    return planned


def _comparable(obj: dict) -> dict:
    """apiVersion/kind are not echoed the same way by every API version; compare the rest."""
    return {key: value for key, value in obj.items() if key not in ("apiVersion", "kind")}


def apply(cluster: Cluster, objects: list[dict], step: Step) -> list[Change]:
    changes = []
    for obj, change in plan(cluster, objects):
        step(change.line() if obj["kind"] != "Secret" else change.line().split(" (")[0])  # never print secret keys
        if change.action == "update" and obj["kind"] == "Job":
            cluster.delete(obj)  # a Job's pod template cannot change in place
        if change.action != "unchanged":
            cluster.apply(obj)
        changes.append(change)
    return changes


def gateway_address(cluster: Cluster, namespace: str, timeout: float, poll: float, step: Step) -> str:
    """Waits for Azure to give the gateway's LoadBalancer a public IP."""
    service = {"kind": "Service", "metadata": {"name": GATEWAY_SERVICE, "namespace": namespace}}
    deadline = time.monotonic() + timeout
    while True:
        live = cluster.get(service) or {}
        ingress = live.get("status", {}).get("loadBalancer", {}).get("ingress") or []
        if ingress:
            return ingress[0].get("ip") or ingress[0].get("hostname")
        if time.monotonic() > deadline:
            raise DeployError(f"the gateway got no public address within {timeout:.0f}s; check "
                              f"`kubectl -n {namespace} describe service {GATEWAY_SERVICE}`")
        step("  waiting for the gateway's public IP ...")
        time.sleep(poll)
