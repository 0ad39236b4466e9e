"""The Azure half of the deploy against ARM's real response shapes (tests/deploy/fake_azure.py:
normalised GETs, secret versions, Key Vault soft delete, its data plane), without a cluster: a
second apply writes nothing, secrets are rewritten only when their value changed, a soft-deleted
vault comes back, the static IP's name and the certificate are made once, and a config without
a usable token issuer is refused before anything exists."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest

from visage.auth.tokens import AuthConfig, TokenVerifier
from visage_deploy import azure_resources
from visage_deploy.__main__ import main
from visage_deploy.azure_resources import AzureClients
from visage_deploy.diff import differing_paths
from visage_deploy.errors import DeployError
from visage_deploy.settings import DeploySettings

from tests.deploy.conftest import StaticTokenCredential
from tests.deploy.fake_azure import FakeAzure

SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"


@pytest.fixture
def arm(tmp_path):
    fake = FakeAzure(tmp_path)
    yield fake
    fake.close()


@pytest.fixture
def settings(arm) -> DeploySettings:
    return replace(DeploySettings(), subscription_id=SUBSCRIPTION, arm_endpoint=arm.base, poll_seconds=0.01,
                   connection_verify=str(arm.cert), vault_endpoint=f"{arm.base}/keyvault/{{vault}}",
                   registry="visagetest", overlay="prod")


def provision(settings: DeploySettings) -> tuple[dict, dict]:
    """azure_resources.apply + provision_vault, as run_apply calls them."""
    credential = StaticTokenCredential()
    clients = AzureClients.connect(settings, credential)
    live = azure_resources.apply(clients, settings, lambda line: None)
    return live, azure_resources.provision_vault(clients, settings, credential, live, lambda line: None)


def test_get_answers_arm_normalised_shapes_not_the_body_sent(arm, settings):
    provision(settings)
    account = arm.handle("GET", arm.find("/microsoft.documentdb/databaseaccounts/")["id"],
                         {"api-version": ["2025-04-15"]}, b"")[1]
    location = account["properties"]["locations"][0]
    assert location["locationName"] == "West Europe" and location["failoverPriority"] == 0
    assert location["provisioningState"] == "Succeeded" and location["documentEndpoint"].startswith("https://")
    vault = arm.handle("GET", arm.find("/microsoft.keyvault/vaults/")["id"], {"api-version": ["2024-11-01"]}, b"")[1]
    assert vault["properties"]["vaultUri"] == f"https://{settings.key_vault}.vault.azure.net/"
    assert vault["properties"]["accessPolicies"] == [] and vault["properties"]["enableRbacAuthorization"] is True


def test_diff_compares_only_what_the_deploy_sets():
    desired = {"properties": {"locations": [{"locationName": "westeurope", "failoverPriority": 0}],
                              "capabilities": [{"name": "EnableCassandra"}, {"name": "EnableServerless"}]}}
    live = {"properties": {"locations": [{"locationName": "West Europe", "failoverPriority": 0, "id": "a-westeurope",
                                          "provisioningState": "Succeeded"}],
                           "capabilities": [{"name": "EnableServerless"}, {"name": "EnableCassandra"}]}}
    assert differing_paths(desired, live) == []
    live["properties"]["capabilities"] = [{"name": "EnableCassandra"}, {"name": "EnableTable"}]
    assert differing_paths(desired, live) == ["properties.capabilities[1].name"]


def test_second_apply_makes_no_put_and_rewrites_no_secret(arm, settings):
    provision(settings)
    writes = len(arm.mutations())
    assert arm.secret_writes("cassandra-password") == 1 and arm.secret_writes(azure_resources.SIGNING_KEY_SECRET) == 1
    provision(settings)
    assert arm.mutations()[writes:] == []


def test_a_secret_is_rewritten_when_its_value_changed_and_its_version_is_reported(arm, settings):
    _, first = provision(settings)
    arm.handle = _rotating_keys(arm.handle)  # Cosmos DB's key regenerated since the first deploy
    _, second = provision(settings)
    assert arm.secret_writes("cassandra-password") == 2 and arm.secret_writes("cassandra-username") == 1
    assert first["versions"]["cassandra-password"] != second["versions"]["cassandra-password"]
    assert first["versions"]["cassandra-username"] == second["versions"]["cassandra-username"]


def _rotating_keys(handle):
    def rotated(method, path, query, body, headers=None):
        if path.lower().endswith("/listkeys"):
            return 200, {"primaryMasterKey": "rotated-key==", "secondaryMasterKey": "s=="}, {}
        return handle(method, path, query, body, headers)
    return rotated


def test_the_local_issuer_key_is_made_once_and_its_jwks_verifies_the_deploys_tokens(arm, settings):
    _, first = provision(settings)
    _, second = provision(settings)
    assert first["signing_key"] == second["signing_key"]
    jwks = json.loads(arm.secret_values[(settings.key_vault, azure_resources.JWKS_SECRET)])
    identity = TokenVerifier(AuthConfig(), jwks=jwks).verify(azure_resources.admin_token(second["signing_key"], 60))
    assert identity.role.label == "admin"


def test_a_soft_deleted_vault_is_recovered_with_its_key(arm, settings):
    _, first = provision(settings)
    vault_id = arm.find("/microsoft.keyvault/vaults/")["id"]
    arm.handle("DELETE", vault_id, {"api-version": ["2024-11-01"]}, b"")
    assert settings.key_vault in arm.deleted_vaults
    _, second = provision(settings)  # before: 409 "Exist soft deleted vault with the same name"
    assert second["signing_key"] == first["signing_key"]  # tokens signed before still verify
    puts = [path for method, path in arm.mutations() if method == "PUT" and path.endswith(settings.key_vault)]
    assert len(puts) == 2  # the create, then the recover; the recovered vault matched: no third PUT


def test_a_soft_deleted_vault_is_purged_when_the_operator_says_so(arm, settings):
    _, first = provision(settings)
    arm.handle("DELETE", arm.find("/microsoft.keyvault/vaults/")["id"], {"api-version": ["2024-11-01"]}, b"")
    _, second = provision(replace(settings, purge_deleted_vault=True))
    assert settings.key_vault not in arm.deleted_vaults
    assert second["signing_key"] != first["signing_key"]  # a new vault, a new key


def test_vault_body_names_access_policies_and_rbac_explicitly(arm, settings):
    provision(settings)
    sent = arm.find("/microsoft.keyvault/vaults/")["properties"]
    assert sent["accessPolicies"] == [] and sent["enableRbacAuthorization"] is True


def test_static_ip_with_dns_label_and_a_certificate_for_that_name(arm, settings):
    live, vault = provision(settings)
    ip = arm.find("/publicipaddresses/")
    assert ip["properties"]["publicIPAllocationMethod"] == "Static" and ip["sku"]["name"] == "Standard"
    assert ip["properties"]["dnsSettings"]["fqdn"] == settings.azure_fqdn == settings.public_hostname
    bundle = arm.certificates[(settings.key_vault, azure_resources.CERTIFICATE)]
    assert bundle["policy"]["x509_props"]["subject"] == f"CN={settings.azure_fqdn}"
    assert bundle["policy"]["issuer"]["name"] == "Self" and "BEGIN CERTIFICATE" in vault["certificate_pem"]
    grants = [doc["properties"] for key, doc in arm.resources.items() if "/roleassignments/" in key]
    cluster_principal = live["AKS cluster"]["identity"]["principalId"]
    assert any(g["principalId"] == cluster_principal and g["roleDefinitionId"].endswith(azure_resources.NETWORK_CONTRIBUTOR)
               for g in grants)


def test_the_operators_host_name_and_certificate_file(arm, settings, tmp_path):
    from tests.deploy.fake_azure import certificate, pem_of
    from cryptography import x509
    key, cert = certificate("visage.example.org", [x509.DNSName("visage.example.org")])
    pem = tmp_path / "visage.pem"
    pem.write_text(pem_of(key, cert))
    own = replace(settings, hostname="visage.example.org", certificate="file", certificate_file=pem)
    _, vault = provision(own)
    assert "BEGIN CERTIFICATE" in vault["certificate_pem"] and own.public_hostname == "visage.example.org"
    writes = len(arm.mutations())
    calls = len(arm.requests)
    provision(own)
    assert arm.mutations()[writes:] == []
    assert not any(path.endswith("/import") for _, path in arm.requests[calls:])  # same file: not imported again


@pytest.mark.parametrize("env, message", [
    ({"VISAGE_AUTH_ISSUER": "https://login.microsoftonline.com/t/v2.0"}, "VISAGE_AUTH_JWKS_URL"),
    ({"VISAGE_AUTH_JWKS_URL": "https://login.microsoftonline.com/t/discovery/v2.0/keys",
      "VISAGE_AUTH_AUDIENCE": "api://visage"}, "VISAGE_AUTH_ISSUER"),
])
def test_a_config_without_a_usable_issuer_is_refused_before_anything_is_created(arm, settings, env, message, capsys):
    half_entra = replace(settings, cassandra_env=env)
    with pytest.raises(DeployError, match=message):
        half_entra.validate()
    assert main(["apply"], credential=StaticTokenCredential(), settings=half_entra) == 2
    assert "no usable token issuer" in capsys.readouterr().err
    assert arm.requests == []


def test_local_identity_with_entra_settings_is_refused(settings):
    with pytest.raises(DeployError, match="VISAGE_AZ_IDENTITY=local but VISAGE_AUTH_ISSUER"):
        replace(settings, identity="local", cassandra_env={"VISAGE_AUTH_ISSUER": "x"}).validate()


def test_destroy_asks_before_deleting_the_store_and_can_keep_it(arm, settings, capsys):
    provision(settings)
    credential = StaticTokenCredential()
    assert main(["destroy"], credential=credential, settings=settings) == 2  # stdin is no terminal: no
    assert "not deleted: the Cosmos DB account" in capsys.readouterr().err
    assert not any(method == "DELETE" for method, _ in arm.mutations())
    assert main(["destroy", "--keep-store"], credential=credential, settings=settings) == 0
    assert arm.find("/microsoft.documentdb/databaseaccounts/")  # kept, with its group
    assert not any("/managedclusters/" in key for key in arm.resources)
    assert main(["destroy", "--yes"], credential=credential, settings=settings) == 0
    assert not any("/microsoft.documentdb/" in key for key in arm.resources)


@pytest.mark.parametrize("change, message", [
    ({"dns_label": "9lives"}, "starting with a letter"),
    ({"dns_label": "a" * 40}, "64-character common name"),
    ({"certificate": "file"}, "VISAGE_AZ_CERTIFICATE_FILE"),
    ({"certificate": "acme", "acme_issuer": "digicert"}, "VISAGE_AZ_HOSTNAME"),
])
def test_an_unusable_address_or_certificate_setting_is_refused_before_anything_is_created(arm, settings, change,
                                                                                        message, capsys):
    assert main(["apply"], credential=StaticTokenCredential(), settings=replace(settings, **change)) == 2
    assert message in capsys.readouterr().err
    assert arm.requests == []


def test_the_demo_loaders_token_is_accepted_by_the_services_as_the_pods_are_wired(arm, settings, rendered, tmp_path,
                                                                                   monkeypatch):
    """The files the CSI driver mounts (read-only) and the environment customize gives each pod: the
    loader signs its own token with the key, the services verify it with the JWKS, nothing is written."""
    import os
    monkeypatch.delenv("VISAGE_TOKEN", raising=False)  # the loader pod has none: it signs its own
    import stat

    from visage.auth.client import find_token
    from visage_deploy import kube
    _, vault = provision(settings)
    mount = tmp_path / "etc-visage-auth"
    mount.mkdir()
    (mount / "signing-key.pem").write_text(vault["signing_key"])
    (mount / "jwks.json").write_text(arm.secret_values[(settings.key_vault, azure_resources.JWKS_SECRET)])
    for path in (*mount.iterdir(), mount):
        path.chmod(stat.S_IREAD | stat.S_IRGRP | stat.S_IROTH | (stat.S_IEXEC if path.is_dir() else 0))
    objects = kube.customize(rendered["prod"], settings, {}, vault)

    def pod_env(kind: str, name: str) -> dict[str, str]:
        obj = next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)
        env = {e["name"]: e["value"] for e in obj["spec"]["template"]["spec"]["containers"][0]["env"] if "value" in e}
        return {key: value.replace(kube.AUTH_DIR, str(mount)) for key, value in env.items() if key.startswith("VISAGE_AUTH")}

    token = find_token(AuthConfig.from_env(pod_env("Job", "visage-demo-loader"), data_dir=tmp_path / "loader-data"))
    assert token, "the loader found no key to sign with"
    service = AuthConfig.from_env(pod_env("Deployment", "visage-ingest"), data_dir=tmp_path / "ingest-data")
    assert not service.is_local  # verifies with the mounted JWKS, never makes a key of its own
    assert TokenVerifier(service).verify(token).role.label == "admin"
    assert sorted(os.listdir(mount)) == ["jwks.json", "signing-key.pem"]
