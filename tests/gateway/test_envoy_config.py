"""The generated Envoy config is accepted by the real Envoy (`--mode validate`), without a warning."""
from __future__ import annotations

import subprocess

import pytest

from visage.config import Config
from visage_gateway import envoy_config, limits
from visage_gateway.supervisor import envoy_command


@pytest.mark.parametrize("env", [{}, {"VISAGE_CORS_ORIGINS": "http://a.example, https://b.example:8443"},
                                 {"VISAGE_QUERY_HOST": "query.visage.svc.cluster.local"}])
def test_envoy_validates_the_generated_config(env, tmp_path):
    settings = envoy_config.GatewaySettings.from_config(Config(), env)
    path = envoy_config.write_bootstrap(settings, tmp_path / "envoy.json")
    result = subprocess.run(envoy_command(path, "validate"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "OK" in result.stdout
    # `make run` shows Envoy's warnings: our own config must cause none (issue 28: ~40 lines of
    # "Deprecated field ... rbac.v3.Principal.metadata" buried the sign-in link).
    assert "Deprecated" not in result.stderr and "[warning]" not in result.stderr, result.stderr[-3000:]


def test_streaming_methods_have_no_timeout_and_unary_ones_do():
    settings = envoy_config.GatewaySettings.from_config(Config(), {})
    routes = {r.name: r for r in envoy_config._grpc_routes(settings)}
    watch = routes["/visage.v1.QueryService/WatchEvents"].route
    # Streams: no overall timeout, but an idle one (silent client streams go sooner), on a cluster of their own.
    assert watch.timeout.total_seconds() == 0 and watch.idle_timeout == limits.SERVER_STREAM_IDLE
    assert watch.cluster == "visage_query_streams"
    assert routes["/visage.v1.IngestService/IngestImages"].route.idle_timeout == limits.CLIENT_STREAM_IDLE
    assert "/visage.v1.ClassifyService/Reclassify" in routes
    assert routes["visage.v1.QueryService"].route.timeout.total_seconds() > 0


def test_a_broken_config_is_refused_by_envoy(tmp_path):
    path = tmp_path / "envoy.json"
    path.write_text('{"static_resources": {"listeners": [{"name": "x"}]}}')
    result = subprocess.run(envoy_command(path, "validate"), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0


def _access_logs(env: dict[str, str]) -> list:
    bootstrap = envoy_config.build_bootstrap(envoy_config.GatewaySettings.from_config(Config(), env))
    listener = bootstrap["staticResources"]["listeners"][0]
    return listener["filterChains"][0]["filters"][0]["typedConfig"].get("accessLog", [])


def test_access_log_is_on_by_default_and_can_be_turned_off():
    assert [log["name"] for log in _access_logs({})] == ["envoy.access_loggers.stdout"]
    assert _access_logs({"VISAGE_GATEWAY_ACCESS_LOG": "0"}) == []
