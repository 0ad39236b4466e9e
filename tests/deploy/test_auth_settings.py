"""`make deploy` wires the external issuer: VISAGE_AUTH_*, the UI's OpenID Connect sign-in
(VISAGE_UI_OIDC_*) and the gateway's host names from the deployer's environment reach the
visage-config ConfigMap that every service and the gateway read; the public name the deploy
makes comes first among the host names."""
from __future__ import annotations

from visage_deploy import kube
from visage_deploy.settings import DeploySettings

ENTRA = {
    "VISAGE_AUTH_ISSUER": "https://login.microsoftonline.com/00000000-0000-0000-0000-000000000001/v2.0",
    "VISAGE_AUTH_AUDIENCE": "api://visage",
    "VISAGE_AUTH_JWKS_URL": "https://login.microsoftonline.com/00000000-0000-0000-0000-000000000001/discovery/v2.0/keys",
    "VISAGE_UI_OIDC_CLIENT_ID": "00000000-0000-0000-0000-0000000000c1",
    "VISAGE_UI_OIDC_AUTHORITY": "https://login.microsoftonline.com/00000000-0000-0000-0000-000000000001/v2.0",
}


def test_identity_settings_reach_the_services_config(monkeypatch):
    for name, value in {**ENTRA, "VISAGE_GATEWAY_HOSTNAMES": "visage.example.org"}.items():
        monkeypatch.setenv(name, value)
    settings = DeploySettings.from_env("dev")
    settings.validate()  # a complete Entra ID configuration
    objects = [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "visage"}, "data": {}}
               for name in ("visage-config", "visage-cassandra")] + [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "visage-gateway", "namespace": "visage"}}]
    config_maps = {obj["metadata"]["name"]: obj["data"] for obj in kube.customize(objects, settings, {})
                   if obj["kind"] == "ConfigMap"}
    assert {k: v for k, v in config_maps["visage-config"].items() if k in ENTRA} == ENTRA
    assert config_maps["visage-config"]["VISAGE_GATEWAY_HOSTNAMES"] == f"{settings.azure_fqdn},visage.example.org"
    assert not any(k in ENTRA for k in config_maps["visage-cassandra"])
