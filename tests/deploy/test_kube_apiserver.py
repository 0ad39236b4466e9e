"""The overlays and the provisioner's Kubernetes code (visage_deploy.kube) against a real
kube-apiserver + etcd: server-side apply, Pod Security "restricted" admission, a second deploy
with new images, pruning, undeploy, rollout waiting."""
from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import yaml
from kubernetes import client as k8s

from visage_deploy import kube
from visage_deploy.errors import DeployError
from visage_deploy.settings import DeploySettings

COSMOS_STORE = {"hosts": "acct.cassandra.cosmos.azure.com", "port": "10350", "client_id": "c1d2e3f4-0000-0000-0000-000000000001",
                "tenant_id": "72f988bf-0000-0000-0000-000000000000", "key_vault": "visage-kv-abc123",
                "secrets": {"cassandra-username": "VISAGE_CASSANDRA_USERNAME",
                            "cassandra-password": "VISAGE_CASSANDRA_PASSWORD"}}
IMAGES_V1 = {name: f"visagetest.azurecr.io/visage-{name}:1111" for name in
             ("ingest", "trainer", "classifier", "query", "gateway", "loader")}
IMAGES_V2 = {name: ref.replace(":1111", ":2222") for name, ref in IMAGES_V1.items()}


def settings_for(overlay: str, namespace: str) -> DeploySettings:
    return replace(DeploySettings(), overlay=overlay, namespace=namespace)


def objects_for(rendered, overlay: str, namespace: str, images=IMAGES_V1) -> list[dict]:
    """The overlay's objects in the test's own namespace (the cluster-wide Azure Monitor settings in
    kube-system are left to the metrics tests below: every namespace would rewrite them)."""
    store = COSMOS_STORE if overlay == "prod" else None
    return [obj for obj in kube.customize(rendered[overlay], settings_for(overlay, namespace), images, store)
            if obj["metadata"].get("namespace") != "kube-system"]


def lines() -> tuple[list[str], callable]:
    seen: list[str] = []
    return seen, seen.append


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_overlay_applies_server_side_and_every_pod_passes_restricted_admission(cluster, rendered, namespace, overlay):
    objects = objects_for(rendered, overlay, namespace)
    seen, step = lines()
    changes = kube.apply(cluster, objects, step)
    assert {change.action for change in changes} == {"create"}
    for obj in objects:
        live = cluster.get(obj)
        assert live is not None, kube.name_of(obj)
        assert any(entry["manager"] == kube.FIELD_MANAGER and entry["operation"] == "Apply"
                   for entry in live["metadata"]["managedFields"])
    live_ns = cluster.get({"kind": "Namespace", "metadata": {"name": namespace}})
    assert live_ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert len([obj for obj in objects if obj["kind"] in ("Deployment", "StatefulSet", "Job")]) >= 6
    kube.admit_pods(cluster, objects)  # every pod the controllers would create, judged by PodSecurity


def test_restricted_admission_is_really_enforced(cluster, rendered, namespace):
    """The check above can fail: a pod that may run as root is refused by the same apiserver."""
    objects = objects_for(rendered, "dev", namespace)
    kube.apply(cluster, objects, lambda line: None)
    gateway = next(obj for obj in objects if obj["metadata"]["name"] == "visage-gateway" and obj["kind"] == "Deployment")
    pod_security = gateway["spec"]["template"]["spec"]["securityContext"]
    del pod_security["runAsNonRoot"]
    pod_security["runAsUser"] = 0
    with pytest.raises(DeployError, match=r"Deployment .*/visage-gateway would be refused: .*violates PodSecurity \"restricted"):
        kube.admit_pods(cluster, [gateway])


def test_prod_reads_cosmos_credentials_from_key_vault_with_workload_identity(cluster, rendered, namespace):
    objects = objects_for(rendered, "prod", namespace)
    kube.apply(cluster, objects, lambda line: None)
    provider = cluster.get({"kind": "SecretProviderClass",
                            "metadata": {"name": kube.STORE_SECRET, "namespace": namespace}})
    assert provider["spec"]["parameters"]["keyvaultName"] == COSMOS_STORE["key_vault"]
    assert provider["spec"]["parameters"]["clientID"] == COSMOS_STORE["client_id"]
    account = cluster.get({"kind": "ServiceAccount", "metadata": {"name": "visage", "namespace": namespace}})
    assert account["metadata"]["annotations"]["azure.workload.identity/client-id"] == COSMOS_STORE["client_id"]
    config = cluster.get({"kind": "ConfigMap", "metadata": {"name": "visage-cassandra", "namespace": namespace}})["data"]
    assert (config["VISAGE_CASSANDRA_HOSTS"], config["VISAGE_CASSANDRA_PORT"], config["VISAGE_CASSANDRA_TLS"]) == (
        COSMOS_STORE["hosts"], "10350", "true")
    ingest = cluster.get({"kind": "Deployment", "metadata": {"name": "visage-ingest", "namespace": namespace}})
    pod = ingest["spec"]["template"]
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert any(volume.get("csi", {}).get("driver") == "secrets-store.csi.k8s.io" for volume in pod["spec"]["volumes"])
    assert {"secretRef": {"name": kube.STORE_SECRET}} in pod["spec"]["containers"][0]["envFrom"]


def test_second_deploy_with_new_images_updates_workloads_and_replaces_the_job(cluster, rendered, namespace):
    """The demo-loader Job's template is immutable, so a new loader image means delete + create:
    the delete must carry a DeleteOptions body the apiserver accepts (it was encoded twice: 400)."""
    kube.apply(cluster, objects_for(rendered, "dev", namespace), lambda line: None)
    seen, step = lines()
    changes = {(change.kind, change.name): change.action
               for change in kube.apply(cluster, objects_for(rendered, "dev", namespace, IMAGES_V2), step)}
    workloads = {key for key in changes if key[0] in ("Deployment", "Job")}
    assert workloads and all(changes[key] == "update" for key in workloads)
    assert all(action == "unchanged" for key, action in changes.items()
               if key[0] in ("Service", "ConfigMap", "NetworkPolicy", "Namespace", "PodDisruptionBudget"))
    for name, image in (("visage-ingest", "ingest"), ("visage-gateway", "gateway")):
        live = cluster.get({"kind": "Deployment", "metadata": {"name": name, "namespace": namespace}})
        assert live["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGES_V2[image]
    job = cluster.get({"kind": "Job", "metadata": {"name": "visage-demo-loader", "namespace": namespace}})
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGES_V2["loader"]


def test_a_third_deploy_with_nothing_new_changes_nothing(cluster, rendered, namespace):
    kube.apply(cluster, objects_for(rendered, "prod", namespace), lambda line: None)
    changes = kube.apply(cluster, objects_for(rendered, "prod", namespace), lambda line: None)
    assert [c for c in changes if c.action != "unchanged"] == []


def test_services_that_became_headless_are_replaced(cluster, rendered, namespace):
    """ClusterIP is immutable: a deploy that makes the mesh Services headless (so Envoy sees every
    pod) must replace Services created by an earlier deploy with a cluster IP."""
    objects = objects_for(rendered, "dev", namespace)
    earlier = copy.deepcopy(objects)
    for obj in earlier:
        if obj["kind"] == "Service" and obj["spec"].get("clusterIP") == "None" and obj["metadata"]["name"] != "visage-cassandra":
            del obj["spec"]["clusterIP"]
    kube.apply(cluster, earlier, lambda line: None)
    kube.apply(cluster, objects, lambda line: None)
    for name in ("visage-ingest", "visage-classifier", "visage-trainer", "visage-query"):
        live = cluster.get({"kind": "Service", "metadata": {"name": name, "namespace": namespace}})
        assert live["spec"]["clusterIP"] == "None", name


def test_an_object_removed_from_the_overlay_is_pruned_and_others_objects_are_kept(cluster, rendered, namespace):
    objects = objects_for(rendered, "dev", namespace)
    kube.apply(cluster, objects, lambda line: None)
    theirs = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "someone-elses", "namespace": namespace},
              "data": {"keep": "me"}}
    cluster.apply(theirs)
    fewer = [obj for obj in objects if not (obj["kind"] == "PodDisruptionBudget" and obj["metadata"]["name"] == "visage-query")]
    seen, step = lines()
    changes = kube.apply(cluster, fewer, step)
    assert [(c.kind, c.name, c.action) for c in changes if c.action == "delete"] == [
        ("PodDisruptionBudget", f"{namespace}/visage-query", "delete")]
    assert cluster.get({"kind": "PodDisruptionBudget", "metadata": {"name": "visage-query", "namespace": namespace}}) is None
    assert cluster.get(theirs) is not None


def test_undeploy_removes_what_the_deploy_made_and_nothing_else(cluster, rendered, namespace):
    objects = objects_for(rendered, "prod", namespace)
    kube.apply(cluster, objects, lambda line: None)
    theirs = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "someone-elses", "namespace": namespace}}
    cluster.apply(theirs)
    removed = kube.undeploy(cluster, namespace, lambda line: None)
    assert {(c.kind, c.name.split("/")[-1]) for c in removed} == {
        (obj["kind"], obj["metadata"]["name"]) for obj in objects if obj["kind"] != "Namespace"}
    assert all(cluster.get(obj) is None for obj in objects if obj["kind"] != "Namespace")
    assert cluster.get(theirs) is not None
    namespace_obj = cluster.get({"kind": "Namespace", "metadata": {"name": namespace}})
    assert "deletionTimestamp" not in namespace_obj["metadata"]  # it still holds someone else's object
    cluster.delete(theirs)
    kube.undeploy(cluster, namespace, lambda line: None)
    namespace_obj = cluster.get({"kind": "Namespace", "metadata": {"name": namespace}})
    assert namespace_obj is None or "deletionTimestamp" in namespace_obj["metadata"]


def test_rollout_wait_returns_once_every_deployment_is_ready(cluster, rendered, namespace, controllers):
    objects = objects_for(rendered, "dev", namespace)
    kube.apply(cluster, objects, lambda line: None)
    kube.wait_for_rollouts(cluster, objects, timeout=120, poll=0.05, step=lambda line: None)
    for obj in objects:
        if obj["kind"] == "Deployment":
            assert kube.rollout_problem(cluster.get(obj)) is None


def test_rollout_wait_says_which_deployment_did_not_roll_out(cluster, rendered, namespace, held_deployments):
    held_deployments.add("visage-gateway")
    objects = objects_for(rendered, "dev", namespace)
    kube.apply(cluster, objects, lambda line: None)
    others = [obj for obj in objects if obj["kind"] != "Deployment" or obj["metadata"]["name"] != "visage-gateway"]
    kube.wait_for_rollouts(cluster, others, timeout=120, poll=0.05, step=lambda line: None)
    with pytest.raises(DeployError) as failure:  # the held one never becomes ready, however long the wait
        kube.wait_for_rollouts(cluster, objects, timeout=1, poll=0.05, step=lambda line: None)
    message = str(failure.value)
    assert f"{namespace}/visage-gateway: 0/1 updatedReplicas" in message
    assert "timed out progressing" in message
    assert "visage-ingest" not in message


def test_access_is_waited_for_while_a_new_role_assignment_propagates(local_kube, cluster):
    """Until a grant reaches the API server it answers 403: the deploy waits for it instead of failing."""
    config = yaml.safe_dump(local_kube.kubeconfig()).encode()
    newcomer = kube.Cluster.with_token(config, local_kube.newcomer_token)
    with pytest.raises(kube.KubernetesRefused) as refused:
        kube.wait_for_access(newcomer, timeout=0, poll=0.01, step=lambda line: None)
    assert refused.value.status == 403
    k8s.RbacAuthorizationV1Api(cluster.api).create_cluster_role_binding({
                   "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                   "metadata": {"name": "newcomer-admin"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                   "subjects": [{"kind": "User", "name": "newcomer", "apiGroup": "rbac.authorization.k8s.io"}]})
    kube.wait_for_access(newcomer, timeout=120, poll=0.05, step=lambda line: None)


# -- what the pods read from Key Vault, the public address, metrics, Jobs ---------------------------------------
VAULT = {"client_id": "c1d2e3f4-0000-0000-0000-000000000001", "tenant_id": "72f988bf-0000-0000-0000-000000000000",
         "key_vault": "visage-aks-kv-abc123",
         "secrets": {"cassandra-username": "VISAGE_CASSANDRA_USERNAME", "cassandra-password": "VISAGE_CASSANDRA_PASSWORD"},
         "versions": {"cassandra-password": "v1", "auth-jwks": "v1", "gateway-tls": "v1"},
         "local_issuer": True, "certificate": "gateway-tls"}


def external_store_objects(rendered, namespace: str, vault=VAULT) -> list[dict]:
    settings = replace(settings_for("prod", namespace), store="external",
                       cassandra_env={"VISAGE_CASSANDRA_HOSTS": "10.1.0.4"},
                       secret_env={"VISAGE_CASSANDRA_USERNAME": "u", "VISAGE_CASSANDRA_PASSWORD": "do-not-leak"})
    return kube.customize(rendered["prod"], settings, IMAGES_V1, vault)


def _pod(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def test_external_store_credentials_come_from_key_vault_never_a_plain_secret(cluster, rendered, namespace):
    objects = external_store_objects(rendered, namespace)
    kube.apply(cluster, objects, lambda line: None)
    kube.admit_pods(cluster, objects)  # CSI volumes pass Pod Security "restricted"
    assert not any(obj["kind"] == "Secret" for obj in objects)
    assert "do-not-leak" not in yaml.safe_dump_all(objects)
    assert cluster.list("Secret", namespace) == []
    store = cluster.get({"kind": "SecretProviderClass", "metadata": {"name": kube.STORE_SECRET, "namespace": namespace}})
    synced = {item["key"] for item in store["spec"]["secretObjects"][0]["data"]}
    assert synced == {"VISAGE_CASSANDRA_USERNAME", "VISAGE_CASSANDRA_PASSWORD"}
    query = cluster.get({"kind": "Deployment", "metadata": {"name": "visage-query", "namespace": namespace}})
    assert {"secretRef": {"name": kube.STORE_SECRET}} in _pod(query)["containers"][0]["envFrom"]


def test_one_issuer_key_every_pod_verifies_with_only_the_loader_holding_the_signing_key(cluster, rendered, namespace):
    objects = external_store_objects(rendered, namespace)
    kube.apply(cluster, objects, lambda line: None)
    for obj in objects:
        if obj["kind"] not in ("Deployment", "Job"):
            continue
        live = cluster.get(obj)
        classes = {v["csi"]["volumeAttributes"]["secretProviderClass"] for v in _pod(live).get("volumes", []) if "csi" in v}
        env = {e["name"]: e["value"] for e in _pod(live)["containers"][0].get("env", []) if "value" in e}
        if obj["kind"] == "Job":
            assert kube.AUTH_SIGNING in classes and env["VISAGE_AUTH_DIR"] == kube.AUTH_DIR
        else:
            assert kube.AUTH_KEYS in classes and kube.AUTH_SIGNING not in classes, obj["metadata"]["name"]
            assert env["VISAGE_AUTH_JWKS_FILE"] == f"{kube.AUTH_DIR}/jwks.json"
    signing = cluster.get({"kind": "SecretProviderClass", "metadata": {"name": kube.AUTH_SIGNING, "namespace": namespace}})
    assert "signing-key.pem" in signing["spec"]["parameters"]["objects"]


def test_the_gateway_serves_tls_from_key_vault_on_the_static_ip_with_its_name(cluster, rendered, namespace):
    objects = external_store_objects(rendered, namespace)
    kube.apply(cluster, objects, lambda line: None)
    settings = settings_for("prod", namespace)
    gateway = cluster.get({"kind": "Deployment", "metadata": {"name": "visage-gateway", "namespace": namespace}})
    container = _pod(gateway)["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["VISAGE_GATEWAY_TLS_CERT"] == env["VISAGE_GATEWAY_TLS_KEY"] == f"{kube.TLS_DIR}/tls.pem"
    assert env["VISAGE_GATEWAY_REDIRECT_PORT"] == "8081"
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    service = cluster.get({"kind": "Service", "metadata": {"name": "visage-gateway", "namespace": namespace}})
    annotations = service["metadata"]["annotations"]
    assert annotations["service.beta.kubernetes.io/azure-pip-name"] == settings.public_ip
    assert annotations["service.beta.kubernetes.io/azure-load-balancer-resource-group"] == settings.resource_group
    assert {(p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {(443, "https"), (80, "http-redirect")}
    config = cluster.get({"kind": "ConfigMap", "metadata": {"name": "visage-config", "namespace": namespace}})
    assert config["data"]["VISAGE_GATEWAY_HOSTNAMES"] == settings.azure_fqdn


def test_a_rotated_secret_restarts_the_pods_that_read_it(cluster, rendered, namespace):
    kube.apply(cluster, external_store_objects(rendered, namespace), lambda line: None)
    rotated = {**VAULT, "versions": {**VAULT["versions"], "cassandra-password": "v2"}}
    changes = kube.apply(cluster, external_store_objects(rendered, namespace, rotated), lambda line: None)
    updated = {c.name.split("/")[1] for c in changes if c.kind == "Deployment" and c.action == "update"}
    assert {"visage-query", "visage-ingest", "visage-classifier", "visage-trainer"} <= updated
    again = kube.apply(cluster, external_store_objects(rendered, namespace, rotated), lambda line: None)
    assert [c for c in again if c.action != "unchanged" and c.kind != "Job"] == []


def test_metrics_ports_are_declared_and_open_only_to_azure_monitor(cluster, rendered, namespace):
    objects = external_store_objects(rendered, namespace)
    kube.apply(cluster, objects, lambda line: None)
    for name in ("visage-ingest", "visage-classifier", "visage-trainer", "visage-query"):
        live = cluster.get({"kind": "Deployment", "metadata": {"name": name, "namespace": namespace}})
        ports = {p["name"]: p["containerPort"] for p in _pod(live)["containers"][0]["ports"]}
        annotations = live["spec"]["template"]["metadata"]["annotations"]
        assert ports["metrics"] == ports["grpc"] + 1000 == int(annotations["prometheus.io/port"])
        assert annotations["prometheus.io/scrape"] == "true"
    policy = cluster.get({"kind": "NetworkPolicy", "metadata": {"name": "metrics-from-monitoring", "namespace": namespace}})
    rule = policy["spec"]["ingress"][0]
    assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert all(peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kube-system"}
               for peer in rule["from"])
    monitoring = cluster.get({"kind": "ConfigMap", "metadata": {"name": "ama-metrics-settings-configmap",
                                                                "namespace": "kube-system"}})
    assert monitoring["data"]["pod-annotation-based-scraping"] == f'podannotationnamespaceregex = "{namespace}"'


def test_someone_elses_azure_monitor_settings_are_kept(cluster, rendered, namespace):
    theirs = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": "ama-metrics-settings-configmap", "namespace": "kube-system"},
              "data": {"schema-version": "v1", "pod-annotation-based-scraping": 'podannotationnamespaceregex = "team"'}}
    existing = cluster.get(theirs)
    if existing is not None:
        cluster.delete(theirs)
    cluster.apply(theirs)
    try:
        seen, step = lines()
        kube.apply(cluster, external_store_objects(rendered, namespace), step)
        assert cluster.get(theirs)["data"]["pod-annotation-based-scraping"] == 'podannotationnamespaceregex = "team"'
        assert any("someone else's, kept" in line and namespace in line for line in seen)
    finally:
        cluster.delete(theirs)


def test_a_failed_job_is_reported_with_its_reason(cluster, rendered, namespace, failing_jobs):
    failing_jobs.add("visage-demo-loader")
    objects = external_store_objects(rendered, namespace)
    kube.apply(cluster, objects, lambda line: None)
    with pytest.raises(DeployError) as failure:
        kube.wait_for_jobs(cluster, objects, timeout=120, poll=0.05, step=lambda line: None)
    assert (f"{namespace}/visage-demo-loader: BackoffLimitExceeded: Job has reached the specified backoff limit"
            in str(failure.value))


def test_jobs_are_waited_for_until_complete(cluster, rendered, namespace, controllers):
    objects = external_store_objects(rendered, namespace)
    kube.apply(cluster, objects, lambda line: None)
    kube.wait_for_jobs(cluster, objects, timeout=120, poll=0.05, step=lambda line: None)
    job = cluster.get({"kind": "Job", "metadata": {"name": "visage-demo-loader", "namespace": namespace}})
    assert kube.job_problem(job) == ("done", None)
