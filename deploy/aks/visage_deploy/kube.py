"""Kubernetes objects: render the kustomize overlay, fill in what only the
deploy knows (image tags, database endpoint, secrets), diff against the
cluster and server-side-apply only what differs.

Objects are addressed by plain REST paths (no discovery round-trips); the tests
run this code against a real kube-apiserver + etcd on loopback
(scripts/kube_apiserver.py)."""
from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import time
from collections.abc import Callable

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from tqdm import tqdm

from visage_deploy.azure_resources import JWKS_SECRET, SIGNING_KEY_SECRET
from visage_deploy.diff import Change, change_for
from visage_deploy.errors import DeployError
from visage_deploy.settings import AKS_DIR, CASSANDRA_PORT, DeploySettings

FIELD_MANAGER = "visage-deploy"
# Every object the deploy writes carries this label: pruning and undeploy touch
# only objects that have it, never something a person or another tool made.
OWNER_LABEL = "app.kubernetes.io/managed-by"
OWNER = "visage-deploy"
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
    "SecretProviderClass": ("/apis/secrets-store.csi.x-k8s.io/v1", "secretproviderclasses"),
    "Pod": ("/api/v1", "pods"),  # never applied: only dry-run admission checks (admit_pods)
}
# Namespaces and configuration first, workloads next, the data loader last.
APPLY_ORDER = ["Namespace", "ServiceAccount", "ConfigMap", "Secret", "SecretProviderClass", "NetworkPolicy",
               "Service", "StatefulSet",
               "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Job"]
CONFIG_HASH = "visage.io/config-hash"
STORE_SECRET = "visage-store-secrets"        # mirrored from Key Vault by the Secrets Store CSI driver
AUTH_KEYS = "visage-auth"                    # the local issuer's JWKS, in every pod
AUTH_SIGNING = "visage-auth-signing"         # its signing key too: only the demo loader, which signs its token
GATEWAY_TLS = "visage-gateway-tls"           # the certificate chain and key, one PEM, in the gateway
AUTH_DIR = "/etc/visage/auth"
TLS_DIR = "/etc/visage/tls"
LOADER_JOB = "visage-demo-loader"
# Azure Monitor managed Prometheus reads this (kube-system; absent until someone makes it): its
# pod-annotation scraping is off for every namespace unless named here. Made only when absent; one
# someone else made is left alone (the deploy says which line to add).
MONITORING_SETTINGS = ("ConfigMap", "kube-system/ama-metrics-settings-configmap")
IN_CLUSTER_CASSANDRA = "visage-cassandra"    # the dev overlay's StatefulSet and Service
CA_DIR = "/etc/visage/cassandra-ca"
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


def customize(objects: list[dict], settings: DeploySettings, images: dict[str, str],
              store: dict | None = None) -> list[dict]:
    """The rendered overlay plus this deploy's images, store endpoint, public name and what the pods
    read from Key Vault. `store` is what azure_resources.provision_vault returned (the Cosmos DB endpoint
    when it made one, the vault's objects and their versions); None where nothing is known yet (a plan
    without credentials) or wanted (tests of the overlays alone)."""
    objects = copy.deepcopy(objects)
    for obj in objects:  # VISAGE_AZ_NAMESPACE: the overlays say "visage"
        if obj["kind"] == "Namespace":
            obj["metadata"]["name"] = settings.namespace
        elif obj["metadata"].get("namespace"):
            obj["metadata"]["namespace"] = settings.namespace
    if settings.store_kind != "in-cluster":  # the dev overlay's own Cassandra is not wanted then
        objects = [obj for obj in objects if not (obj["kind"] in ("StatefulSet", "Service")
                                                  and obj["metadata"]["name"] == IN_CLUSTER_CASSANDRA)]
    by_name = {(obj["kind"], obj["metadata"]["name"]): obj for obj in objects}
    cassandra = by_name[("ConfigMap", "visage-cassandra")]["data"]
    for key, value in settings.cassandra_env.items():
        target = cassandra if key.startswith("VISAGE_CASSANDRA_") else by_name[("ConfigMap", "visage-config")]["data"]
        target[key] = value
    if settings.store_kind == "external":
        cassandra["VISAGE_CASSANDRA_PORT"] = settings.cassandra_env.get("VISAGE_CASSANDRA_PORT", str(CASSANDRA_PORT))
    by_name[("ConfigMap", "visage-config")]["data"]["VISAGE_GATEWAY_HOSTNAMES"] = ",".join(gateway_hostnames(settings))
    _public_address(by_name, settings)
    if store is not None:
        if "hosts" in store:
            cassandra.update(VISAGE_CASSANDRA_HOSTS=store["hosts"], VISAGE_CASSANDRA_PORT=store["port"],
                             VISAGE_CASSANDRA_TLS="true", VISAGE_CASSANDRA_BACKEND="cosmos")  # its table options
        objects += _key_vault_wiring(objects, settings, store)
    if settings.cassandra_ca_file is not None:
        objects.append(_ca_config_map(objects, settings))
        cassandra.update(VISAGE_CASSANDRA_TLS="true", VISAGE_CASSANDRA_TLS_CA_FILE=f"{CA_DIR}/ca.pem")
    # Key Vault's versions: a rotated secret or a renewed certificate is a new version, so the pods restart
    # and read it (the CSI driver's rotation refreshes the mounted files; environment variables need a restart).
    objects.append(_monitoring_settings(settings))
    config_hash = _config_hash(objects, (store or {}).get("versions", {}))
    for obj in objects:
        obj["metadata"].setdefault("labels", {})[OWNER_LABEL] = OWNER
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


def _store_clients(objects: list[dict]) -> list[dict]:
    """Pod templates of the services that talk to Cassandra (they read the visage-cassandra ConfigMap)."""
    return [obj for obj in objects if obj["kind"] == "Deployment" and any(
        source.get("configMapRef", {}).get("name") == "visage-cassandra"
        for container in obj["spec"]["template"]["spec"]["containers"] for source in container.get("envFrom", []))]


def _monitoring_settings(settings: DeploySettings) -> dict:
    """Pod-annotation scraping of this namespace (the services' prometheus.io/* annotations), as
    Azure documents ama-metrics-settings-configmap (schema v1)."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": MONITORING_SETTINGS[1].split("/")[1], "namespace": "kube-system"},
            "data": {"schema-version": "v1", "config-version": "ver1",
                     "pod-annotation-based-scraping": f'podannotationnamespaceregex = "{settings.namespace}"'}}


def gateway_hostnames(settings: DeploySettings) -> list[str]:
    """The public name the deploy made (or the operator's), then any the operator listed."""
    extra = [name.strip().lower() for name in settings.cassandra_env.get("VISAGE_GATEWAY_HOSTNAMES", "").split(",")]
    return list(dict.fromkeys([settings.public_hostname, *(name for name in extra if name)]))


def _public_address(by_name: dict, settings: DeploySettings) -> None:
    """The gateway's LoadBalancer on the static IP the deploy made (in the deploy's resource group,
    not the cluster's node group): 443 to Envoy's TLS listener, 80 to its redirect to https."""
    service = by_name.get(("Service", GATEWAY_SERVICE))
    if service is None:  # objects without the gateway (tests of the ConfigMaps alone)
        return
    service["metadata"].setdefault("annotations", {}).update({
        "service.beta.kubernetes.io/azure-pip-name": settings.public_ip,
        "service.beta.kubernetes.io/azure-load-balancer-resource-group": settings.resource_group})


def _csi_volume(name: str, provider_class: str) -> dict:
    return {"name": name, "csi": {"driver": "secrets-store.csi.k8s.io", "readOnly": True,
                                  "volumeAttributes": {"secretProviderClass": provider_class}}}


def _mount(obj: dict, provider_class: str, path: str, env: dict[str, str] | None = None) -> None:
    """A Key Vault SecretProviderClass mounted read-only at `path` in the workload's first container."""
    pod = obj["spec"]["template"]
    pod["metadata"].setdefault("labels", {})["azure.workload.identity/use"] = "true"
    volume = provider_class.removeprefix("visage-")
    pod["spec"].setdefault("volumes", []).append(_csi_volume(volume, provider_class))
    container = pod["spec"]["containers"][0]
    container.setdefault("volumeMounts", []).append({"name": volume, "mountPath": path, "readOnly": True})
    for key, value in (env or {}).items():
        container.setdefault("env", []).append({"name": key, "value": value})


def _provider_class(settings: DeploySettings, store: dict, name: str, objects: dict[str, str],
                    synced: dict[str, str] | None = None) -> dict:
    """A SecretProviderClass for Key Vault objects {object name: file name}; `synced` mirrors some into a
    Secret of the same name ({object name: key}) for containers that read them as environment variables."""
    spec = {"provider": "azure", "parameters": {
        "usePodIdentity": "false", "clientID": store["client_id"], "keyvaultName": store["key_vault"],
        "tenantId": store["tenant_id"],
        "objects": yaml.safe_dump({"array": [
            yaml.safe_dump({"objectName": obj, "objectType": "secret", "objectAlias": alias})
            for obj, alias in sorted(objects.items())]})}}
    if synced:
        spec["secretObjects"] = [{"secretName": name, "type": "Opaque", "data": [
            {"objectName": objects[obj], "key": key} for obj, key in sorted(synced.items())]}]
    return {"apiVersion": "secrets-store.csi.x-k8s.io/v1", "kind": "SecretProviderClass",
            "metadata": {"name": name, "namespace": settings.namespace}, "spec": spec}


def _key_vault_wiring(objects: list[dict], settings: DeploySettings, store: dict) -> list[dict]:
    """What the pods read from Key Vault, each through a SecretProviderClass (Secrets Store CSI driver,
    AKS add-on) mounted with the workload identity: the store's credentials (mirrored by the driver into
    STORE_SECRET, read as environment variables), the local issuer's JWKS (every pod) and signing key
    (the demo loader only), the gateway's certificate."""
    by_name = {(obj["kind"], obj["metadata"]["name"]): obj for obj in objects}
    account = by_name[("ServiceAccount", "visage")]
    account["metadata"].setdefault("annotations", {})["azure.workload.identity/client-id"] = store["client_id"]
    classes = []
    if store["secrets"]:
        classes.append(_provider_class(settings, store, STORE_SECRET, {name: name for name in store["secrets"]},
                                       store["secrets"]))
        for deployment in _store_clients(objects):
            _mount(deployment, STORE_SECRET, "/mnt/store-secrets")
            deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"].append({"secretRef": {"name": STORE_SECRET}})
    if store.get("local_issuer"):
        classes.append(_provider_class(settings, store, AUTH_KEYS, {JWKS_SECRET: "jwks.json"}))
        classes.append(_provider_class(settings, store, AUTH_SIGNING, {JWKS_SECRET: "jwks.json",
                                                                       SIGNING_KEY_SECRET: "signing-key.pem"}))
        for obj in objects:  # services and the gateway verify with the JWKS: an external key file to them
            if obj["kind"] == "Deployment" and obj["metadata"]["name"] != IN_CLUSTER_CASSANDRA:
                _mount(obj, AUTH_KEYS, AUTH_DIR, {"VISAGE_AUTH_JWKS_FILE": f"{AUTH_DIR}/jwks.json"})
            elif obj["kind"] == "Job" and obj["metadata"]["name"] == LOADER_JOB:  # signs its own token with the key
                _mount(obj, AUTH_SIGNING, AUTH_DIR, {"VISAGE_AUTH_DIR": AUTH_DIR})
    if store.get("certificate"):
        classes.append(_provider_class(settings, store, GATEWAY_TLS, {store["certificate"]: "tls.pem"}))
        gateway = by_name[("Deployment", GATEWAY_SERVICE)]
        _mount(gateway, GATEWAY_TLS, TLS_DIR, {"VISAGE_GATEWAY_TLS_CERT": f"{TLS_DIR}/tls.pem",
                                               "VISAGE_GATEWAY_TLS_KEY": f"{TLS_DIR}/tls.pem"})
        for probe in ("readinessProbe", "livenessProbe"):  # Envoy's one listener speaks TLS now
            gateway["spec"]["template"]["spec"]["containers"][0][probe]["httpGet"]["scheme"] = "HTTPS"
    return classes


def _ca_config_map(objects: list[dict], settings: DeploySettings) -> dict:
    """The CA of a TLS Cassandra with a private CA (Managed Instance), mounted where the services look."""
    for deployment in _store_clients(objects):
        pod = deployment["spec"]["template"]["spec"]
        pod.setdefault("volumes", []).append({"name": "cassandra-ca", "configMap": {"name": "visage-cassandra-ca"}})
        pod["containers"][0].setdefault("volumeMounts", []).append(
            {"name": "cassandra-ca", "mountPath": CA_DIR, "readOnly": True})
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "visage-cassandra-ca", "namespace": settings.namespace},
            "data": {"ca.pem": settings.cassandra_ca_file.read_text()}}


def _config_hash(objects: list[dict], versions: dict[str, str]) -> str:
    config = [obj.get("data") for obj in objects if obj["kind"] in ("ConfigMap", "Secret")]
    return hashlib.sha256(json.dumps([config, versions], sort_keys=True).encode()).hexdigest()[:16]


class KubernetesRefused(DeployError):
    """The API server answered an error status (kept, so callers can tell 403 from 422)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class Cluster:
    """Just enough of the Kubernetes API: get, list, server-side apply, delete."""

    def __init__(self, api: k8s.ApiClient):
        self.api = api

    @classmethod
    def from_kubeconfig(cls, kubeconfig: bytes | dict) -> "Cluster":
        config = yaml.safe_load(kubeconfig) if isinstance(kubeconfig, bytes | str) else kubeconfig
        return cls(k8s_config.new_client_from_config_dict(config))

    @classmethod
    def with_token(cls, kubeconfig: bytes, token: str) -> "Cluster":
        """The user kubeconfig's server and CA, authenticated with an Entra ID token: what
        kubelogin does for a cluster with local accounts disabled (no admin kubeconfig)."""
        config = yaml.safe_load(kubeconfig)
        config["users"] = [{"name": "visage-deploy", "user": {"token": token}}]
        for context in config["contexts"]:
            context["context"]["user"] = "visage-deploy"
        return cls.from_kubeconfig(config)

    def _path(self, obj: dict) -> str:
        return self._collection(obj["kind"], obj["metadata"].get("namespace")) + f"/{obj['metadata']['name']}"

    @staticmethod
    def _collection(kind: str, namespace: str | None) -> str:
        if kind not in KINDS:
            raise DeployError(f"no API path known for kind {kind}")
        prefix, plural = KINDS[kind]
        scope = f"/namespaces/{namespace}" if namespace else ""
        return f"{prefix}{scope}/{plural}"

    def _request(self, method: str, path: str, body: dict | None = None, query: list | None = None,
                 content_type: str = "application/json") -> tuple[int, dict]:
        # `body` is a dict: the client serialises it (a pre-encoded string would be encoded twice).
        request = self.api.param_serialize(method, path, query_params=query or [], body=body,
                                           header_params={"Content-Type": content_type, "Accept": "application/json"},
                                           auth_settings=["BearerToken"])
        response = self.api.call_api(*request)
        response.read()
        try:
            data = json.loads(response.data or b"{}")
        except ValueError:  # e.g. "404 page not found" for an API group not served (yet)
            data = {"message": response.data.decode(errors="replace").strip()}
        if response.status >= 400 and response.status != 404:
            raise KubernetesRefused(f"Kubernetes refused {method} {path}: {response.status} "
                                    f"{data.get('message', data)}", response.status)
        return response.status, data

    def get(self, obj: dict) -> dict | None:
        status, data = self._request("GET", self._path(obj))
        return None if status == 404 else data

    def list(self, kind: str, namespace: str | None, label_selector: str = "") -> list[dict]:
        query = [("labelSelector", label_selector)] if label_selector else []
        status, data = self._request("GET", self._collection(kind, namespace), query=query)
        return [{**item, "kind": kind} for item in ([] if status == 404 else data.get("items", []))]

    def owned(self, kind: str, namespace: str | None) -> list[dict]:
        """Every object of `kind` in `namespace` that this deploy wrote (OWNER_LABEL)."""
        return self.list(kind, namespace, f"{OWNER_LABEL}={OWNER}")

    def apply(self, obj: dict, dry_run: bool = False) -> dict:
        query = [("fieldManager", FIELD_MANAGER), ("force", "true")] + ([("dryRun", "All")] if dry_run else [])
        return self._request("PATCH", self._path(obj), obj, query, "application/apply-patch+yaml")[1]

    def create(self, obj: dict, dry_run: bool = False) -> dict:
        query = [("dryRun", "All")] if dry_run else []
        return self._request("POST", self._collection(obj["kind"], obj["metadata"].get("namespace")), obj, query)[1]

    def delete(self, obj: dict, wait_seconds: float = 60) -> None:
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        self._request("DELETE", self._path(obj), body)
        if wait_seconds <= 0:
            return
        deadline = time.monotonic() + wait_seconds
        while self.get(obj) is not None:  # really gone, so a re-create does not collide
            if time.monotonic() > deadline:
                raise DeployError(f"{obj['kind']} {name_of(obj)} was not deleted within {wait_seconds:.0f}s")
            time.sleep(0.2)


def wait_for_access(cluster: Cluster, timeout: float, poll: float, step: Step) -> None:
    """A new Azure RBAC grant takes a few minutes to reach the API server: 403 until then."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            cluster.list("Namespace", None)
            return
        except KubernetesRefused as error:
            if error.status != 403 or time.monotonic() > deadline:
                raise
        step("  waiting for the new cluster role assignment to reach the API server ...")
        time.sleep(poll)


def plan(cluster: Cluster | None, objects: list[dict]) -> list[tuple[dict, Change]]:
    """Each object with its change; with no cluster (no credentials) all are creates.
    What an apply would store is asked of the apiserver (server-side dry run), so values it
    normalises (`cpu: 1` → "1", defaults) are not mistaken for drift."""
    planned = []
    for obj in objects:
        live = cluster.get(obj) if cluster else None
        if live is None:
            planned.append((obj, change_for(obj["kind"], name_of(obj), _comparable(obj), None)))
            continue
        try:
            would_be = _comparable(cluster.apply(obj, dry_run=True))
        except DeployError:  # an immutable field changed (Job template, Service clusterIP): compare ours
            would_be = _comparable(obj)
        planned.append((obj, change_for(obj["kind"], name_of(obj), would_be, _comparable(live))))
    return planned


SERVER_BOOKKEEPING = ("managedFields", "resourceVersion", "generation", "creationTimestamp", "uid")


def _comparable(obj: dict) -> dict:
    """apiVersion/kind are not echoed the same way by every API version, and the server's own
    bookkeeping and status are not ours to compare: the rest is."""
    meta = {key: value for key, value in obj.get("metadata", {}).items() if key not in SERVER_BOOKKEEPING}
    return {**{key: value for key, value in obj.items() if key not in ("apiVersion", "kind", "status")},
            "metadata": meta}


def apply(cluster: Cluster, objects: list[dict], step: Step) -> list[Change]:
    """Applies what differs, then prunes what this deploy made earlier and the overlay no longer has."""
    changes = []
    for obj, change in plan(cluster, objects):
        if (obj["kind"], name_of(obj)) == MONITORING_SETTINGS and change.action != "create" and not _ours(cluster.get(obj)):
            step(f"  = {obj['kind']} {name_of(obj)}: someone else's, kept; add `podannotationnamespaceregex = "
                 f'"{_scraped(obj)}"` to its pod-annotation-based-scraping')
            continue
        step(change.line() if obj["kind"] != "Secret" else change.line().split(" (")[0])  # never print secret keys
        if change.action == "update" and _immutable_field_changed(obj, change):
            cluster.delete(obj)  # replaced: these fields cannot change in place
        if change.action != "unchanged":
            cluster.apply(obj)
        changes.append(change)
    return changes + prune(cluster, objects, step)


def _ours(live: dict | None) -> bool:
    return bool(live) and (live["metadata"].get("labels") or {}).get(OWNER_LABEL) == OWNER


def _scraped(obj: dict) -> str:
    return obj["data"]["pod-annotation-based-scraping"].split('"')[1]


def _immutable_field_changed(obj: dict, change: Change) -> bool:
    """A Job's pod template, and a Service's clusterIP (e.g. becoming headless), cannot be updated."""
    if obj["kind"] == "Job":
        return True
    return obj["kind"] == "Service" and "spec.clusterIP" in change.fields


def _namespaces(objects: list[dict]) -> list[str]:
    return sorted({obj["metadata"]["namespace"] for obj in objects if obj["metadata"].get("namespace")})


def prune(cluster: Cluster, objects: list[dict], step: Step) -> list[Change]:
    """Deletes objects labelled as ours in our namespaces that are not in `objects`."""
    wanted = {(obj["kind"], name_of(obj)) for obj in objects}
    return [change for namespace in _namespaces(objects) for change in _delete_owned(cluster, namespace, wanted, step)]


def _delete_owned(cluster: Cluster, namespace: str, keep: set[tuple[str, str]], step: Step) -> list[Change]:
    """Deletes every object with OWNER_LABEL in `namespace` except those in `keep`, workloads first."""
    removed = []
    for kind in reversed(APPLY_ORDER):
        if kind == "Namespace":
            continue
        for live in cluster.owned(kind, namespace):
            if (kind, name_of(live)) not in keep:
                removed.append(Change(kind, name_of(live), "delete"))
                step(removed[-1].line())
                cluster.delete(live)
    return removed


def undeploy(cluster: Cluster, namespace: str, step: Step) -> list[Change]:
    """Removes every object this deploy made in `namespace`, then the namespace if it is ours.
    Objects without OWNER_LABEL (someone else's) stay, and so does a namespace that holds them."""
    removed = _delete_owned(cluster, namespace, set(), step)
    namespace_obj = cluster.get({"kind": "Namespace", "metadata": {"name": namespace}})
    others = foreign_objects(cluster, namespace)
    if others:
        step(f"  namespace {namespace} kept: it holds objects this deploy did not make ({', '.join(others[:5])})")
    elif namespace_obj and namespace_obj["metadata"].get("labels", {}).get(OWNER_LABEL) == OWNER:
        removed.append(Change("Namespace", namespace, "delete"))
        step(removed[-1].line())
        # The namespace controller empties it in the background; nothing waits on that.
        cluster.delete({**namespace_obj, "kind": "Namespace"}, wait_seconds=0)
    return removed


def admit_pods(cluster: Cluster, objects: list[dict]) -> None:
    """Dry-run creates a pod from every workload template: admission (Pod Security "restricted"
    on the namespace) judges pods, not Deployments, so a refusal would otherwise only show up as a
    rollout that never starts. Refused → DeployError naming the workload and the reason."""
    for obj in objects:
        template = obj.get("spec", {}).get("template")
        if not template:
            continue
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {**copy.deepcopy(template.get("metadata", {})), "name": f"{obj['metadata']['name']}-admission",
                            "namespace": obj["metadata"]["namespace"]},
               "spec": copy.deepcopy(template["spec"])}
        for claim in obj["spec"].get("volumeClaimTemplates", []):  # what the StatefulSet controller adds
            name = claim["metadata"]["name"]
            pod["spec"].setdefault("volumes", []).append(
                {"name": name, "persistentVolumeClaim": {"claimName": f"{name}-{obj['metadata']['name']}-0"}})
        try:
            cluster.create(pod, dry_run=True)
        except DeployError as error:
            raise DeployError(f"the pods of {obj['kind']} {name_of(obj)} would be refused: {error}") from error


# Made in every namespace by Kubernetes itself, not by anyone's deploy.
AUTOMATIC = {("ServiceAccount", "default"), ("ConfigMap", "kube-root-ca.crt")}


def foreign_objects(cluster: Cluster, namespace: str) -> list[str]:
    """Objects in `namespace` without OWNER_LABEL (someone else's), as "Kind/name"."""
    found = []
    for kind in APPLY_ORDER:
        if kind == "Namespace":
            continue
        for item in cluster.list(kind, namespace):
            labels = item["metadata"].get("labels") or {}
            if labels.get(OWNER_LABEL) != OWNER and (kind, item["metadata"]["name"]) not in AUTOMATIC:
                found.append(f"{kind}/{item['metadata']['name']}")
    return found


def rollout_problem(live: dict) -> str | None:
    """None when a Deployment's current generation is fully rolled out and ready; else what is missing."""
    spec, status = live.get("spec", {}), live.get("status", {})
    want = spec.get("replicas", 1)
    if status.get("observedGeneration", 0) < live["metadata"].get("generation", 1):
        return "the new version is not picked up yet"
    for field in ("updatedReplicas", "readyReplicas", "availableReplicas"):
        if status.get(field, 0) < want:
            detail = "; ".join(f"{c.get('type')}: {c.get('message')}" for c in status.get("conditions", [])
                               if c.get("status") != "True" or c.get("reason") == "ProgressDeadlineExceeded")
            return f"{status.get(field, 0)}/{want} {field}" + (f" ({detail})" if detail else "")
    return None


def wait_for_rollouts(cluster: Cluster, objects: list[dict], timeout: float, poll: float, step: Step) -> None:
    """Waits until every Deployment is rolled out; on timeout says which are not, and why."""
    deployments = [obj for obj in objects if obj["kind"] == "Deployment"]
    deadline = time.monotonic() + timeout
    with tqdm(total=len(deployments), desc="rolling out", unit="deployment") as bar:
        while True:
            problems = {name_of(obj): rollout_problem(cluster.get(obj) or {"metadata": {}, "status": {}})
                        for obj in deployments}
            pending = {name: problem for name, problem in problems.items() if problem}
            bar.n = len(deployments) - len(pending)
            bar.refresh()
            if not pending:
                return
            if time.monotonic() > deadline:
                lines = "\n".join(f"  {name}: {problem}" for name, problem in sorted(pending.items()))
                namespace = deployments[0]["metadata"]["namespace"]
                raise DeployError(f"not rolled out within {timeout:.0f}s:\n{lines}\nsee `kubectl -n {namespace} "
                                  "describe deployment NAME` and `kubectl -n {namespace} logs deploy/NAME`")
            time.sleep(poll)


def job_problem(live: dict) -> tuple[str, str | None]:
    """("done", None), ("running", None) or ("failed", why) for a Job, from its status conditions."""
    for condition in live.get("status", {}).get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Complete":
            return "done", None
        if condition.get("type") == "Failed":
            return "failed", f"{condition.get('reason', 'Failed')}: {condition.get('message', '')}".rstrip(": ")
    return "running", None


def wait_for_jobs(cluster: Cluster, objects: list[dict], timeout: float, poll: float, step: Step) -> None:
    """Waits until every Job has completed; a failed one is reported with the reason Kubernetes gives
    (e.g. BackoffLimitExceeded: its pods failed each try; `kubectl logs job/NAME` shows why)."""
    jobs = [obj for obj in objects if obj["kind"] == "Job"]
    deadline = time.monotonic() + timeout
    while jobs:
        states = {name_of(job): job_problem(cluster.get(job) or {}) for job in jobs}
        failed = {name: why for name, (state, why) in states.items() if state == "failed"}
        if failed:
            namespace = jobs[0]["metadata"]["namespace"]
            lines = "\n".join(f"  {name}: {why}" for name, why in sorted(failed.items()))
            raise DeployError(f"Job failed:\n{lines}\nsee `kubectl -n {namespace} logs job/NAME`")
        running = sorted(name for name, (state, _) in states.items() if state == "running")
        if not running:
            return
        if time.monotonic() > deadline:
            raise DeployError(f"Jobs not finished within {timeout:.0f}s: {', '.join(running)}")
        step(f"  waiting for {', '.join(running)} ...")
        time.sleep(poll)


def gateway_address(cluster: Cluster, namespace: str, timeout: float, poll: float, step: Step) -> tuple[str, int]:
    """Waits for Azure to give the gateway's LoadBalancer a public IP; returns it with the Service's port."""
    service = {"kind": "Service", "metadata": {"name": GATEWAY_SERVICE, "namespace": namespace}}
    deadline = time.monotonic() + timeout
    while True:
        live = cluster.get(service) or {}
        ingress = live.get("status", {}).get("loadBalancer", {}).get("ingress") or []
        if ingress:
            return ingress[0].get("ip") or ingress[0].get("hostname"), live["spec"]["ports"][0]["port"]
        if time.monotonic() > deadline:
            raise DeployError(f"the gateway got no public address within {timeout:.0f}s; check "
                              f"`kubectl -n {namespace} describe service {GATEWAY_SERVICE}`")
        step("  waiting for the gateway's public IP ...")
        time.sleep(poll)
