"""`make deploy` wires the external issuer: VISAGE_AUTH_* and the gateway's host
names from the deployer's environment reach the visage-config ConfigMap that
every service and the gateway read."""
from __future__ import annotations

from visage_deploy import kube
from visage_deploy.settings import DeploySettings

ENTRA = {
    "VISAGE_AUTH_ISSUER": "https://login.microsoftonline.com/00000000-0000-0000-0000-000000000001/v2.0",
    "VISAGE_AUTH_AUDIENCE": "api://visage",
    "VISAGE_AUTH_JWKS_URL": "https://login.microsoftonline.com/00000000-0000-0000-0000-000000000001/discovery/v2.0/keys",
    "VISAGE_GATEWAY_HOSTNAMES": "visage.example.org",
}


def test_identity_settings_reach_the_services_config(monkeypatch):
    for name, value in ENTRA.items():
        monkeypatch.setenv(name, value)
    settings = DeploySettings.from_env("dev")
    objects = [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "visage"}, "data": {}}
               for name in ("visage-config", "visage-cassandra")]
    config_maps = {obj["metadata"]["name"]: obj["data"] for obj in kube.customize(objects, settings, {})}
    assert {k: v for k, v in config_maps["visage-config"].items() if k in ENTRA} == ENTRA
    assert not any(k in ENTRA for k in config_maps["visage-cassandra"])
