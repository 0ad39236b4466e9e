"""The provisioner end to end: real Azure SDK clients over real HTTPS against a local Azure
Resource Manager (tests/deploy/fake_azure.py), and the cluster it makes is a real
kube-apiserver (scripts/kube_apiserver.py) with stand-in controllers for rollouts and the LB."""
from __future__ import annotations

import json
import uuid
from dataclasses import replace

import pytest
import requests

from visage.auth.tokens import AuthConfig, TokenVerifier
from visage_deploy.__main__ import main
from visage_deploy.azure_resources import ACR_PULL_ROLE
from visage_deploy.images import IMAGES

from tests.deploy.conftest import DEPLOYER_OID


def _deployment(cluster, namespace: str, name: str) -> dict | None:
    return cluster.get({"kind": "Deployment", "metadata": {"name": name, "namespace": namespace}})


def test_first_apply_creates_everything_waits_for_rollout_and_health(fake_azure, deploy_settings, credential,
                                                                     cluster, gateway_health, capsys):
    assert main(["apply"], credential=credential, settings=deploy_settings) == 0
    out = capsys.readouterr().out
    url = f"https://{deploy_settings.azure_fqdn}:{gateway_health.port}/"
    link = out.rstrip().splitlines()[-1]
    assert link.startswith(f"{url}#token=")  # one deploy ends with the https address and a sign-in link
    jwks = json.loads(fake_azure.secret_values[(deploy_settings.key_vault, "auth-jwks")])
    assert TokenVerifier(AuthConfig(), jwks=jwks).verify(link.split("#token=")[1]).role.label == "admin"
    assert out.index("waiting for every Deployment to roll out") < out.index("as a person would") < out.index("Visage is up")
    # the last check went through the public name: an authenticated read of the store, then a Classify
    assert ("GET", "/v1/personas?page_size=100") in gateway_health.calls
    assert ("POST", "/v1/images:classify") in gateway_health.calls
    paths = [path.lower() for method, path in fake_azure.mutations()]
    assert any(path.endswith("/resourcegroups/visage-rg") for path in paths)
    assert any(path.endswith("/registries/visagetest") for path in paths)
    assert any(path.endswith("/managedclusters/visage-aks") for path in paths)
    assert any("/roleassignments/" in path for path in paths)
    assert fake_azure.operations and all(left < 0 for left in fake_azure.operations.values())  # LROs were polled
    assert len(fake_azure.uploads) == 1 and fake_azure.uploads[0] > 1000
    built = sorted(name for run in fake_azure.runs.values() for name in run["request"]["imageNames"])
    assert [name.split(":")[0] for name in built] == sorted(f"visage-{image}" for image in IMAGES)
    ingest = _deployment(cluster, deploy_settings.namespace, "visage-ingest")
    image = ingest["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == f"visagetest.azurecr.io/{next(name for name in built if 'ingest' in name)}"


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_second_apply_changes_nothing_and_rebuilds_no_image(fake_azure, deploy_settings, credential, capsys, overlay):
    """ACR run outputs name images by digest: the 'already built' check must still see them. ARM's GETs
    answer its normalised shapes (Cosmos DB's "West Europe"): those are no change either."""
    settings = replace(deploy_settings, overlay=overlay)
    assert main(["apply"], credential=credential, settings=settings) == 0
    runs, mutations_before = len(fake_azure.runs), len(fake_azure.mutations())
    assert main(["apply"], credential=credential, settings=settings) == 0
    out = capsys.readouterr().out
    assert fake_azure.mutations()[mutations_before:] == []
    assert len(fake_azure.runs) == runs and len(fake_azure.uploads) == 1
    assert out.count("Visage is up") == 2


def test_cluster_is_zonal_with_system_and_user_pools_workload_identity_and_a_policy_engine(
        fake_azure, deploy_settings, credential, capsys):
    assert main(["apply"], credential=credential, settings=deploy_settings) == 0
    cluster = fake_azure.find("/managedclusters/visage-aks")["properties"]
    system, user = cluster["agentPoolProfiles"]
    assert (system["mode"], user["mode"]) == ("System", "User")
    for pool in (system, user):
        assert pool["enableAutoScaling"] and pool["minCount"] <= pool["maxCount"]
        assert pool["availabilityZones"] == ["1", "2", "3"]
    assert cluster["networkProfile"]["networkPolicy"] == "cilium"      # NetworkPolicies are enforced
    assert cluster["oidcIssuerProfile"]["enabled"] and cluster["securityProfile"]["workloadIdentity"]["enabled"]
    assert cluster["autoUpgradeProfile"]["upgradeChannel"] == "patch"
    assert cluster["disableLocalAccounts"] and cluster["aadProfile"]["enableAzureRBAC"]
    assert cluster["addonProfiles"]["azureKeyvaultSecretsProvider"]["enabled"]
    requested = [path.lower() for _, path in fake_azure.requests]
    assert not any(path.endswith("/listclusteradmincredential") for path in requested)
    grants = [doc["properties"] for key, doc in fake_azure.resources.items() if "/roleassignments/" in key]
    assert any(grant["principalId"] == DEPLOYER_OID for grant in grants)  # the deployer, through Azure RBAC


def test_plan_prints_skus_node_counts_store_and_monthly_cost(deploy_settings, capsys):
    assert main(["plan"], credential=None, settings=replace(deploy_settings, subscription_id="")) == 0
    out = capsys.readouterr().out
    assert "1-2 × Standard_D2s_v5" in out and "2-5 × Standard_D4s_v5" in out
    assert "Apache Cassandra StatefulSet in the cluster" in out
    assert "total" in out and "per month" in out and "$" in out
    prod = replace(deploy_settings, subscription_id="", overlay="prod")
    assert main(["plan"], credential=None, settings=prod) == 0
    assert "Cosmos DB for Apache Cassandra" in capsys.readouterr().out


def test_plan_after_apply_shows_only_what_changed(fake_azure, deploy_settings, credential, capsys):
    assert main(["apply"], credential=credential, settings=deploy_settings) == 0
    capsys.readouterr()
    bigger = replace(deploy_settings, node_max_count=9)
    assert main(["plan"], credential=credential, settings=bigger) == 0
    out = capsys.readouterr().out
    assert "~ AKS cluster visage-aks: update (properties.agentPoolProfiles[1].maxCount)" in out
    assert "= container registry visagetest: unchanged" in out
    assert "  + " not in out and out.count(": update") == 1


def test_prod_provisions_serverless_cosmos_with_credentials_in_key_vault(fake_azure, deploy_settings, credential,
                                                                         cluster, capsys):
    prod = replace(deploy_settings, overlay="prod")
    assert main(["apply"], credential=credential, settings=prod) == 0, capsys.readouterr().err
    account = fake_azure.find("/microsoft.documentdb/databaseaccounts/")
    capabilities = {c["name"] for c in account["properties"]["capabilities"]}
    assert capabilities == {"EnableCassandra", "EnableServerless", "DisableRateLimitingResponses"}
    assert account["properties"]["minimalTlsVersion"] == "Tls12"
    # The store's LOCAL_QUORUM / LOCAL_SERIAL requests are refused on a Session-consistency account.
    assert account["properties"]["consistencyPolicy"] == {"defaultConsistencyLevel": "Strong"}
    # The account's own backup: periodic (the API for Cassandra has no continuous mode), 4-hourly, kept a week.
    assert account["properties"]["backupPolicy"] == {"type": "Periodic", "periodicModeProperties": {
        "backupIntervalInMinutes": 240, "backupRetentionIntervalInHours": 168, "backupStorageRedundancy": "Geo"}}
    secrets = {key.rsplit("/", 1)[1] for key in fake_azure.resources if "/microsoft.keyvault/vaults/" in key and "/secrets/" in key}
    assert secrets == {"cassandra-username", "cassandra-password", "auth-signing-key", "auth-jwks"}
    federated = fake_azure.find("/federatedidentitycredentials/visage")["properties"]
    assert federated["subject"] == f"system:serviceaccount:{prod.namespace}:visage"
    assert federated["issuer"] == fake_azure.find("/managedclusters/visage-aks")["properties"]["oidcIssuerProfile"]["issuerURL"]
    config = cluster.get({"kind": "ConfigMap", "metadata": {"name": "visage-cassandra", "namespace": prod.namespace}})
    assert config["data"]["VISAGE_CASSANDRA_HOSTS"] == f"{prod.cosmos_account}.cassandra.cosmos.azure.com"
    assert config["data"]["VISAGE_CASSANDRA_BACKEND"] == "cosmos"  # no Apache-only table options sent
    assert cluster.get({"kind": "StatefulSet", "metadata": {"name": "visage-cassandra", "namespace": prod.namespace}}) is None
    assert fake_azure.find("/cassandrakeyspaces/visage")["properties"]["options"] == {}  # serverless: no throughput


def test_cosmos_throughput_mode_by_config(fake_azure, deploy_settings, credential, capsys):
    provisioned = replace(deploy_settings, overlay="prod", cosmos_throughput=4000)
    assert main(["apply"], credential=credential, settings=provisioned) == 0, capsys.readouterr().err
    account = fake_azure.find("/microsoft.documentdb/databaseaccounts/")
    assert {c["name"] for c in account["properties"]["capabilities"]} == {"EnableCassandra",
                                                                         "DisableRateLimitingResponses"}
    keyspace = fake_azure.find("/cassandrakeyspaces/visage")["properties"]
    assert keyspace["options"] == {"autoscaleSettings": {"maxThroughput": 4000}}


def test_prod_settings_are_checked_before_anything_is_created(fake_azure, deploy_settings, credential, capsys):
    prod = replace(deploy_settings, overlay="prod", store="external",
                   cassandra_env={"VISAGE_CASSANDRA_HOSTS": "10.1.0.4"})  # no credentials
    assert main(["apply"], credential=credential, settings=prod) == 2
    assert "VISAGE_CASSANDRA_PASSWORD" in capsys.readouterr().err
    assert fake_azure.mutations() == []


def test_external_managed_instance_uses_port_9042_and_the_given_ca(fake_azure, deploy_settings, credential, cluster,
                                                                    tmp_path, capsys):
    ca = tmp_path / "mi-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    prod = replace(deploy_settings, overlay="prod", cassandra_ca_file=ca,
                   cassandra_env={"VISAGE_CASSANDRA_HOSTS": "10.1.0.4,10.1.0.5"},
                   secret_env={"VISAGE_CASSANDRA_USERNAME": "u", "VISAGE_CASSANDRA_PASSWORD": "p"})
    assert main(["apply"], credential=credential, settings=prod) == 0, capsys.readouterr().err
    config = cluster.get({"kind": "ConfigMap", "metadata": {"name": "visage-cassandra", "namespace": prod.namespace}})
    assert config["data"]["VISAGE_CASSANDRA_PORT"] == "9042" and config["data"]["VISAGE_CASSANDRA_TLS"] == "true"
    assert config["data"].get("VISAGE_CASSANDRA_BACKEND", "apache") == "apache"  # Managed Instance: Apache Cassandra
    ca_map = cluster.get({"kind": "ConfigMap", "metadata": {"name": "visage-cassandra-ca", "namespace": prod.namespace}})
    assert ca_map["data"]["ca.pem"] == ca.read_text()
    assert config["data"]["VISAGE_CASSANDRA_TLS_CA_FILE"].startswith("/etc/visage/cassandra-ca/")
    assert not any("/microsoft.documentdb/" in key for key in fake_azure.resources)
    # the credentials went to Key Vault (read by the pods through the CSI driver), not into a Secret
    assert fake_azure.secret_values[(prod.key_vault, "cassandra-password")] == "p"
    assert cluster.list("Secret", prod.namespace) == []


def test_rollout_that_does_not_finish_is_reported_not_announced(fake_azure, deploy_settings, credential,
                                                                held_deployments, capsys):
    held_deployments.add("visage-query")
    assert main(["apply"], credential=credential, settings=replace(deploy_settings, rollout_timeout=2)) == 2
    captured = capsys.readouterr()
    assert "visage-query: 0/1 updatedReplicas" in captured.err and "Visage is up" not in captured.out


def test_a_failed_demo_loader_is_reported_not_announced(fake_azure, deploy_settings, credential, failing_jobs,
                                                      capsys):
    failing_jobs.add("visage-demo-loader")
    assert main(["apply"], credential=credential, settings=deploy_settings) == 2
    captured = capsys.readouterr()
    assert "visage-demo-loader: BackoffLimitExceeded" in captured.err and "Visage is up" not in captured.out


def test_unhealthy_gateway_is_reported_not_announced(fake_azure, deploy_settings, credential, gateway_health,
                                                     monkeypatch, capsys):
    gateway_health.status = 503
    monkeypatch.setattr("visage_deploy.__main__.HEALTH_TIMEOUT_SECONDS", 1)  # it answers 503 however long
    assert main(["apply"], credential=credential, settings=deploy_settings) == 2
    captured = capsys.readouterr()
    assert "is not healthy" in captured.err and "HTTP 503" in captured.err and "Visage is up" not in captured.out


def test_existing_acr_pull_grant_under_another_name_is_accepted(fake_azure, deploy_settings, credential, capsys):
    """`az aks update --attach-acr` names its assignment itself; ARM then answers 409 to ours."""
    registry = (f"/subscriptions/{deploy_settings.subscription_id}/resourceGroups/visage-rg/providers/"
                f"Microsoft.ContainerRegistry/registries/visagetest")
    fake_azure.resources[f"{registry}/providers/microsoft.authorization/roleassignments/{uuid.uuid4()}".lower()] = {
        "properties": {"principalId": "11111111-2222-3333-4444-555555555555",
                       "roleDefinitionId": f"/subscriptions/x/providers/Microsoft.Authorization/roleDefinitions/{ACR_PULL_ROLE}"}}
    assert main(["apply"], credential=credential, settings=deploy_settings) == 0, capsys.readouterr().err
    assert "AcrPull for the cluster: unchanged (granted before, under another name)" in capsys.readouterr().out


def test_acr_tasks_not_allowed_says_how_to_build_locally(fake_azure, deploy_settings, credential, capsys):
    fake_azure.tasks_allowed = False
    assert main(["apply"], credential=credential, settings=deploy_settings) == 2
    err = capsys.readouterr().err
    assert "TasksOperationsNotAllowed" in err and "make deploy-push" in err and "VISAGE_AZ_SKIP_IMAGE_BUILD=1" in err
    assert main(["apply"], credential=credential, settings=replace(deploy_settings, skip_image_build=True)) == 0
    assert fake_azure.runs == {}


def test_fake_arm_refuses_an_unknown_api_version(fake_azure):
    """The api-version check the provisioner passes in every test above is a real one."""
    url = f"{fake_azure.base}/subscriptions/x/resourcegroups/visage-rg"
    assert requests.get(url, params={"api-version": "2015-01-01"}, verify=str(fake_azure.cert)).json()["error"]["code"] \
        == "InvalidApiVersionParameter"
    assert requests.get(url, verify=str(fake_azure.cert)).json()["error"]["code"] == "MissingApiVersionParameter"


def test_quota_error_is_reported_clearly(fake_azure, deploy_settings, credential, capsys):
    fake_azure.failures[("PUT", r"/managedClusters/")] = (
        400, "QuotaExceeded", "Operation could not be completed as it results in exceeding approved standardDSv5Family Cores quota.")
    assert main(["apply"], credential=credential, settings=deploy_settings) == 2
    err = capsys.readouterr().err
    assert "create AKS cluster: quota exceeded in westeurope (QuotaExceeded)" in err
    assert "VISAGE_AZ_NODE_COUNT" in err and "standardDSv5Family" in err


def test_missing_permission_is_reported_clearly(fake_azure, deploy_settings, credential, capsys):
    fake_azure.failures[("GET", r"/resourcegroups/visage-rg$")] = (
        403, "AuthorizationFailed", "The client 'x' does not have authorization to perform action 'Microsoft.Resources/subscriptions/resourcegroups/read'.")
    assert main(["apply"], credential=credential, settings=deploy_settings) == 2
    err = capsys.readouterr().err
    assert "permission denied (AuthorizationFailed)" in err and "Contributor" in err


def test_unavailable_region_is_reported_clearly(fake_azure, deploy_settings, credential, capsys):
    fake_azure.failures[("PUT", r"/registries/")] = (
        400, "LocationNotAvailableForResourceType", "The provided location 'mars' is not available.")
    assert main(["apply"], credential=credential, settings=replace(deploy_settings, location="mars")) == 2
    assert "not available in region mars (LocationNotAvailableForResourceType)" in capsys.readouterr().err


def test_destroy_deletes_the_resource_group_it_made_and_is_idempotent(fake_azure, deploy_settings, credential, capsys):
    assert main(["apply"], credential=credential, settings=deploy_settings) == 0
    assert main(["destroy", "--yes"], credential=credential, settings=deploy_settings) == 0
    assert not any(key.startswith("/subscriptions/") for key in fake_azure.resources)
    assert main(["destroy", "--yes"], credential=credential, settings=deploy_settings) == 0
    assert "already gone" in capsys.readouterr().out


def test_destroy_in_a_resource_group_that_existed_before_deletes_only_its_own(fake_azure, deploy_settings,
                                                                              credential, capsys):
    group = f"/subscriptions/{deploy_settings.subscription_id}/resourcegroups/visage-rg"
    fake_azure.resources[group] = {"id": group, "name": "visage-rg", "location": "westeurope", "tags": {"team": "data"},
                                   "properties": {"provisioningState": "Succeeded"}}
    theirs = f"{group}/providers/microsoft.storage/storageaccounts/theirdata"
    fake_azure.resources[theirs] = {"id": theirs, "name": "theirdata", "type": "Microsoft.Storage/storageAccounts",
                                    "tags": {}}
    assert main(["apply"], credential=credential, settings=deploy_settings) == 0
    assert fake_azure.resources[group]["tags"] == {"team": "data"}  # used, not taken over
    assert main(["destroy", "--yes"], credential=credential, settings=deploy_settings) == 0
    assert group in fake_azure.resources and theirs in fake_azure.resources
    assert not any("/managedclusters/" in key or "/registries/" in key for key in fake_azure.resources)


def test_prod_nodes_give_whole_cpu_pods_cores_of_their_own(fake_azure, deploy_settings, credential, capsys):
    """The prod gateway is a Guaranteed pod with one CPU (test_manifests); the
    static CPU manager on prod user-pool nodes is what makes that core its own."""
    assert main(["apply"], credential=credential, settings=deploy_settings) == 0
    capsys.readouterr()
    cluster = fake_azure.find("/managedclusters/visage-aks")
    assert "kubeletConfig" not in cluster["properties"]["agentPoolProfiles"][1]
    prod = replace(deploy_settings, overlay="prod")
    assert main(["plan"], credential=credential, settings=prod) == 0
    assert "properties.agentPoolProfiles[1].kubeletConfig" in capsys.readouterr().out


def test_remove_deletes_the_apps_kubernetes_objects_and_keeps_the_cluster(fake_azure, deploy_settings, credential,
                                                                          cluster, capsys):
    assert main(["apply"], credential=credential, settings=deploy_settings) == 0
    assert main(["remove"], credential=credential, settings=deploy_settings) == 0
    assert _deployment(cluster, deploy_settings.namespace, "visage-ingest") is None
    assert fake_azure.find("/managedclusters/visage-aks")


def test_undeploy_then_deploy_again_recovers_the_soft_deleted_vault(fake_azure, deploy_settings, credential, capsys):
    """deploy/aks/README.md suggests `make undeploy && make deploy`: the vault's fixed name is held by
    the soft-deleted vault for 7 days; the deploy recovers it (same key: earlier tokens still verify)."""
    assert main(["apply"], credential=credential, settings=deploy_settings) == 0
    key = fake_azure.secret_values[(deploy_settings.key_vault, "auth-signing-key")]
    assert main(["destroy", "--yes"], credential=credential, settings=deploy_settings) == 0
    assert deploy_settings.key_vault in fake_azure.deleted_vaults
    assert main(["apply"], credential=credential, settings=deploy_settings) == 0, capsys.readouterr().err
    assert "recover" in capsys.readouterr().out
    assert fake_azure.secret_values[(deploy_settings.key_vault, "auth-signing-key")] == key


def test_plan_shows_the_address_certificate_identity_and_store(deploy_settings, capsys):
    anonymous = replace(deploy_settings, subscription_id="")
    assert main(["plan"], credential=None, settings=anonymous) == 0
    out = capsys.readouterr().out
    assert f"https://{anonymous.azure_fqdn}/" in out and "static public IP" in out
    assert "self-signed by Key Vault" in out
    assert "the local issuer: one Ed25519 key, generated once into Key Vault" in out
    assert "Apache Cassandra in the cluster" in out
    own = replace(deploy_settings, subscription_id="", hostname="visage.example.org", overlay="prod",
                  identity="entra", cassandra_env={"VISAGE_AUTH_ISSUER": "https://login.microsoftonline.com/t/v2.0",
                                                   "VISAGE_AUTH_AUDIENCE": "api://visage",
                                                   "VISAGE_AUTH_JWKS_URL": "https://login.microsoftonline.com/t/keys"})
    assert main(["plan"], credential=None, settings=own) == 0
    out = capsys.readouterr().out
    assert "https://visage.example.org/" in out and "Microsoft Entra ID" in out and "Cosmos DB for Apache Cassandra" in out
