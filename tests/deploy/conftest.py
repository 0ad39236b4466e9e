"""Deploy-area fixtures: kustomize, the rendered overlays, a real Kubernetes API server
(etcd + kube-apiserver from scripts/kube_apiserver.py, on loopback) and a local fake of
Azure Resource Manager whose AKS cluster hands out that API server's address."""
from __future__ import annotations

import base64
import importlib.util
import itertools
import json
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from azure.core.credentials import AccessToken
from kubernetes import client as k8s

from visage_deploy import kube
from visage_deploy.azure_resources import AKS_SERVER_APP
from visage_deploy.settings import OVERLAYS, REPO, DeploySettings

from tests.conftest import missing_prerequisite
from tests.deploy.fake_azure import FakeAzure

KUSTOMIZE = REPO / ".tools" / "bin" / "kustomize"
CHECKOV = REPO / ".tools" / "checkov-venv" / "bin" / "checkov"
DEPLOYER_OID = "99999999-8888-7777-6666-555555555555"
LB_IP = "127.0.0.1"   # the "public" address the stand-in cloud controller gives the gateway's LoadBalancer


def _load_script():
    spec = importlib.util.spec_from_file_location("kube_apiserver", REPO / "scripts" / "kube_apiserver.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


kube_apiserver = _load_script()


class StaticTokenCredential:
    """A TokenCredential that never talks to Entra ID: an unsigned JWT naming the deployer for
    ARM (the provisioner reads its oid claim), and the local apiserver's token for AKS."""

    def __init__(self, kube_token: str = ""):
        self.kube_token = kube_token

    def get_token(self, *scopes, **kwargs) -> AccessToken:
        if any(scope.startswith(AKS_SERVER_APP) for scope in scopes):
            return AccessToken(self.kube_token, int(time.time()) + 3600)
        claims = base64.urlsafe_b64encode(json.dumps({"oid": DEPLOYER_OID}).encode()).decode().rstrip("=")
        return AccessToken(f"eyJhbGciOiJub25lIn0.{claims}.", int(time.time()) + 3600)


@pytest.fixture(scope="session")
def kustomize() -> Path:
    if not KUSTOMIZE.exists():
        missing_prerequisite("kustomize is not installed", "make deploy-tools")
    return KUSTOMIZE


@pytest.fixture(scope="session")
def rendered(kustomize) -> dict[str, list[dict]]:
    return {overlay: kube.render(overlay, kustomize) for overlay in OVERLAYS}


# -- a real Kubernetes API server ------------------------------------------------------------------------------
SECRET_PROVIDER_CLASS_CRD = {  # what the AKS Key Vault add-on installs (trimmed to the schema's shape)
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "secretproviderclasses.secrets-store.csi.x-k8s.io"},
    "spec": {"group": "secrets-store.csi.x-k8s.io", "scope": "Namespaced",
             "names": {"kind": "SecretProviderClass", "listKind": "SecretProviderClassList",
                       "plural": "secretproviderclasses", "singular": "secretproviderclass"},
             "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                 "type": "object", "properties": {"spec": {"type": "object", "properties": {
                     "provider": {"type": "string"},
                     "parameters": {"type": "object", "additionalProperties": {"type": "string"}},
                     "secretObjects": {"type": "array", "items": {
                         "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}},
                     "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}}}}]}}


@pytest.fixture(scope="session")
def local_kube(tmp_path_factory):
    missing = kube_apiserver.missing()
    if missing:
        missing_prerequisite(f"{', '.join(c.binary for c in missing)} not built",
                             "make kube-apiserver  (builds them from the Go module proxy, once per machine)")
    server = kube_apiserver.LocalKube(tmp_path_factory.mktemp("kube")).start()
    api = kube.Cluster.from_kubeconfig(server.kubeconfig()).api
    k8s.ApiextensionsV1Api(api).create_custom_resource_definition(SECRET_PROVIDER_CLASS_CRD)
    _wait_for_resource(api, "/apis/secrets-store.csi.x-k8s.io/v1")
    yield server
    server.stop()


def _wait_for_resource(api, path: str) -> None:
    """A new CRD is served a moment after it is created; wait for its discovery document."""
    cluster = kube.Cluster(api)
    for _ in range(600):
        if cluster._request("GET", path)[0] == 200:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{path} never became available")


@pytest.fixture(scope="session")
def cluster(local_kube) -> kube.Cluster:
    return kube.Cluster.from_kubeconfig(local_kube.kubeconfig())


NAMESPACES = itertools.count(1)


@pytest.fixture
def namespace() -> str:
    """Each test deploys into a namespace of its own: without kube-controller-manager a deleted
    namespace stays Terminating for ever, so names are never reused."""
    return f"visage-t{next(NAMESPACES)}-{int(time.time() * 1000) % 100000}"


class StandInControllers:
    """What kube-controller-manager, kubelets and Azure's cloud controller would do, which need
    nodes this machine does not have: report every Deployment as rolled out (observed generation,
    ready replicas), every Job as complete, and give LoadBalancer Services an address. Deployments
    named in `held` are left un-ready, to see how the deploy reports a rollout that does not finish;
    Jobs named in `failing` fail as the Job controller reports a Job whose pods failed every try."""

    def __init__(self, api):
        self.apps, self.core, self.batch = k8s.AppsV1Api(api), k8s.CoreV1Api(api), k8s.BatchV1Api(api)
        self.held: set[str] = set()
        self.failing: set[str] = set()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.wait(0.2):
            try:
                self._reconcile()
            except Exception:  # noqa: BLE001 - an object deleted mid-pass, os.environ changing under the
                pass           # client's proxy lookup...: the loop must outlive it; the next pass retries

    def _reconcile(self) -> None:
        for deployment in self.apps.list_deployment_for_all_namespaces().items:
            meta, spec, status = deployment.metadata, deployment.spec, deployment.status
            want = spec.replicas if spec.replicas is not None else 1
            ready = 0 if meta.name in self.held else want
            if status and status.observed_generation == meta.generation and status.ready_replicas == ready:
                continue
            conditions = [] if ready else [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                            "message": f'ReplicaSet "{meta.name}-1" has timed out progressing.'}]
            self.apps.patch_namespaced_deployment_status(meta.name, meta.namespace, {"status": {
                "observedGeneration": meta.generation, "replicas": want, "updatedReplicas": ready,
                "readyReplicas": ready, "availableReplicas": ready, "conditions": conditions}})
        for job in self.batch.list_job_for_all_namespaces().items:
            if not (job.status and job.status.conditions):
                finish_job(self.batch, job.metadata.namespace, job.metadata.name, failed=job.metadata.name in self.failing)
        for service in self.core.list_service_for_all_namespaces().items:
            if service.spec.type == "LoadBalancer" and not (service.status.load_balancer and service.status.load_balancer.ingress):
                self.core.patch_namespaced_service_status(service.metadata.name, service.metadata.namespace,
                                                          {"status": {"loadBalancer": {"ingress": [{"ip": LB_IP}]}}})

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()


def finish_job(batch, namespace: str, name: str, failed: bool) -> None:
    """The status the Job controller writes (Kubernetes 1.33 validates it: a terminal condition comes
    with its interim one, SuccessCriteriaMet / FailureTarget, and start and completion times)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if failed:
        why = {"reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}
        status = {"startTime": now, "failed": 7, "conditions": [
            {"type": "FailureTarget", "status": "True", **why, "lastTransitionTime": now, "lastProbeTime": now},
            {"type": "Failed", "status": "True", **why, "lastTransitionTime": now, "lastProbeTime": now}]}
    else:
        status = {"startTime": now, "completionTime": now, "succeeded": 1, "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
             "message": "Reached expected number of succeeded pods", "lastTransitionTime": now, "lastProbeTime": now},
            {"type": "Complete", "status": "True", "reason": "CompletionsReached",
             "message": "Reached expected number of succeeded pods", "lastTransitionTime": now, "lastProbeTime": now}]}
    batch.patch_namespaced_job_status(name, namespace, {"status": status})


@pytest.fixture(scope="session")
def controllers(cluster):
    stand_in = StandInControllers(cluster.api)
    yield stand_in
    stand_in.stop()


@pytest.fixture
def held_deployments(controllers):
    yield controllers.held
    controllers.held.clear()


@pytest.fixture
def failing_jobs(controllers):
    yield controllers.failing
    controllers.failing.clear()


@pytest.fixture
def fake_azure(tmp_path, local_kube):
    fake = FakeAzure(tmp_path, kube=local_kube)
    yield fake
    fake.close()


@pytest.fixture
def gateway_health(fake_azure, tmp_path):
    """Where the load balancer would forward to the gateway: tests/deploy/stand_in_gateway.py (the
    real gateway's answers to the last check are tested in tests/gateway/test_deploy_final_check.py)."""
    from tests.deploy.stand_in_gateway import StandInGateway
    gateway = StandInGateway(fake_azure, tmp_path / "stand-in-gateway")
    yield gateway
    gateway.close()


@pytest.fixture
def deploy_settings(fake_azure, kustomize, tmp_path, namespace, controllers, gateway_health) -> DeploySettings:
    faces = tmp_path / "faces" / "bbt" / "someone"
    faces.mkdir(parents=True)
    (faces / "1.jpg").write_bytes(b"\xff\xd8 not decoded by the deploy")
    return replace(DeploySettings(), subscription_id="00000000-0000-0000-0000-000000000001",
                   arm_endpoint=fake_azure.base, poll_seconds=0.05, connection_verify=str(fake_azure.cert),
                   vault_endpoint=f"{fake_azure.base}/keyvault/{{vault}}",
                   kustomize=kustomize, faces_dir=tmp_path / "faces", registry="visagetest",
                   namespace=namespace, gateway_probe_port=gateway_health.port,
                   gateway_redirect_probe_port=gateway_health.redirect_port, gateway_probe_address=LB_IP,
                   rollout_timeout=120)


@pytest.fixture
def credential(local_kube) -> StaticTokenCredential:
    return StaticTokenCredential(local_kube.token)
