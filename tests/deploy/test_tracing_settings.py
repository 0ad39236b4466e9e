"""`make deploy` passes an OTLP collector, when the deployer's environment names one, to
every service and the gateway (the visage-config ConfigMap); without one, tracing stays off."""
from __future__ import annotations

from visage_deploy import kube
from visage_deploy.settings import TRACING_ENV_NAMES, DeploySettings

TRACING = {
    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.monitoring.svc.cluster.local:4317",
    "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
    "OTEL_TRACES_SAMPLER_ARG": "0.1",
    "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod",
}


def _config_maps(settings: DeploySettings) -> dict[str, dict]:
    objects = [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "visage"}, "data": {}}
               for name in ("visage-config", "visage-cassandra")]
    return {obj["metadata"]["name"]: obj["data"] for obj in kube.customize(objects, settings, {})}


def test_an_otlp_collector_reaches_the_services_config(monkeypatch):
    for name, value in TRACING.items():
        monkeypatch.setenv(name, value)
    config_maps = _config_maps(DeploySettings.from_env("prod"))
    assert {k: v for k, v in config_maps["visage-config"].items() if k.startswith("OTEL_")} == TRACING
    assert not any(k.startswith("OTEL_") for k in config_maps["visage-cassandra"])


def test_without_a_collector_no_tracing_setting_is_deployed(monkeypatch):
    for name in TRACING_ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    config_maps = _config_maps(DeploySettings.from_env("dev"))
    assert not any(k.startswith("OTEL_") for data in config_maps.values() for k in data)
