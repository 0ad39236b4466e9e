"""The provisioner against a local Azure Resource Manager: real SDK clients,
real HTTPS, long-running operations; then the cluster's Kubernetes API."""
from __future__ import annotations

from dataclasses import replace

from visage_deploy.__main__ import main
from tests.deploy.fake_azure import GATEWAY_IP


def test_first_apply_creates_everything_and_prints_the_gateway(fake_azure, deploy_settings, credential, capsys):
    assert main(["apply"], credential=credential, settings=deploy_settings) == 0
    out = capsys.readouterr().out
    assert f"http://{GATEWAY_IP}/" in out
    paths = [path.lower() for method, path in fake_azure.mutations()]
    assert any(path.endswith("/resourcegroups/visage-rg") for path in paths)
    assert any(path.endswith("/registries/visagetest") for path in paths)
    assert any(path.endswith("/managedclusters/visage-aks") for path in paths)
    assert any("/roleassignments/" in path for path in paths)
    assert fake_azure.operations and all(left < 0 for left in fake_azure.operations.values())  # LROs were polled
    assert len(fake_azure.uploads) == 1 and fake_azure.uploads[0] > 1000
    built = sorted(name for run in fake_azure.runs.values() for name in run["request"]["imageNames"])
    assert [name.split(":")[0] for name in built] == sorted(
        f"visage-{image}" for image in ("ingest", "trainer", "classifier", "query", "gateway", "loader"))
    deployment = fake_azure.resources["/apis/apps/v1/namespaces/visage/deployments/visage-ingest"]
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.startswith("visagetest.azurecr.io/visage-ingest:") and image == f"visagetest.azurecr.io/{built[2]}"


def test_second_apply_changes_nothing(fake_azure, deploy_settings, credential, capsys):
    assert main(["apply"], credential=credential, settings=deploy_settings) == 0
    before = len(fake_azure.requests)
    mutations_before = len(fake_azure.mutations())
    assert main(["apply"], credential=credential, settings=deploy_settings) == 0
    out = capsys.readouterr().out
    assert len(fake_azure.requests) > before  # it did read the state
    assert fake_azure.mutations()[mutations_before:] == []
    assert len(fake_azure.uploads) == 1
    assert "http://203.0.113.10/" in out


def test_plan_after_apply_shows_only_what_changed(fake_azure, deploy_settings, credential, capsys):
    assert main(["apply"], credential=credential, settings=deploy_settings) == 0
    capsys.readouterr()
    bigger = replace(deploy_settings, node_max_count=9)
    assert main(["plan"], credential=credential, settings=bigger) == 0
    out = capsys.readouterr().out
    assert "~ AKS cluster visage-aks: update (properties.agentPoolProfiles[0].maxCount)" in out
    assert "= container registry visagetest: unchanged" in out
    assert "+ " not in out and out.count(": update") == 1


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


def test_destroy_deletes_the_resource_group_and_is_idempotent(fake_azure, deploy_settings, credential, capsys):
    assert main(["apply"], credential=credential, settings=deploy_settings) == 0
    assert main(["destroy"], credential=credential, settings=deploy_settings) == 0
    assert not any(key.startswith("/subscriptions/") for key in fake_azure.resources)
    assert main(["destroy"], credential=credential, settings=deploy_settings) == 0
    assert "already gone" in capsys.readouterr().out


def test_prod_nodes_give_whole_cpu_pods_cores_of_their_own(fake_azure, deploy_settings, credential, capsys):
    """The prod gateway is a Guaranteed pod with one CPU (test_manifests); the
    static CPU manager on prod nodes is what makes that core its own."""
    assert main(["apply"], credential=credential, settings=deploy_settings) == 0
    capsys.readouterr()
    cluster = next(doc for key, doc in fake_azure.resources.items() if "/managedclusters/" in key)
    assert "kubeletConfig" not in cluster["properties"]["agentPoolProfiles"][0]
    prod = replace(deploy_settings, overlay="prod",
                   cassandra_env={"VISAGE_CASSANDRA_HOSTS": "visage.cassandra.cosmos.azure.com"})
    assert main(["plan"], credential=credential, settings=prod) == 0
    assert "properties.agentPoolProfiles[0].kubeletConfig" in capsys.readouterr().out
