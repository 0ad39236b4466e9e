"""Prometheus metrics: every RPC of every service is counted by method and status code
and timed (the interceptor build_server installs), and /metrics serves them over HTTP."""
from __future__ import annotations

import urllib.request

import grpc
import pytest
from prometheus_client import REGISTRY

from visage import metrics
from visage.loopback import free_port
from visage.v1 import query_pb2, query_pb2_grpc
from visage_query.server import start


def count(method: str, code: str) -> float:
    return REGISTRY.get_sample_value("visage_rpc_requests_total", {"method": method, "code": code}) or 0.0


def test_rpcs_are_counted_and_timed_by_method_and_code(config, sqlite_store):
    service = start(config, sqlite_store, "127.0.0.1:0")
    get, create = "/visage.v1.QueryService/GetPersona", "/visage.v1.QueryService/CreatePersona"
    before = count(get, "NOT_FOUND"), count(create, "OK"), count(create, "INVALID_ARGUMENT")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = query_pb2_grpc.QueryServiceStub(channel)
            stub.CreatePersona(query_pb2.CreatePersonaRequest(persona={"display_name": "Ada"}))
            for request in (query_pb2.GetPersonaRequest(persona_id="nobody"), query_pb2.CreatePersonaRequest()):
                with pytest.raises(grpc.RpcError):
                    (stub.GetPersona if isinstance(request, query_pb2.GetPersonaRequest) else stub.CreatePersona)(
                        request)
    finally:
        service.stop(0)
    assert (count(get, "NOT_FOUND"), count(create, "OK"), count(create, "INVALID_ARGUMENT")) == \
        (before[0] + 1, before[1] + 1, before[2] + 1)
    assert REGISTRY.get_sample_value("visage_rpc_duration_seconds_count", {"method": create}) >= 2
    assert REGISTRY.get_sample_value("visage_rpc_in_flight", {"method": create}) == 0


def test_metrics_are_served_over_http():
    port = free_port()
    metrics.serve_metrics(port, "127.0.0.1")
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    assert "visage_rpc_requests_total" in body and 'visage_queue_depth{queue="grpc_workers_query"}' in body


def test_each_service_in_one_process_has_its_own_worker_queue_gauge(config, sqlite_store):
    """`make run` serves several services from one process: one gauge must not replace another's."""
    from visage_classifier.server import start as start_classifier

    services = [start(config, sqlite_store, "127.0.0.1:0"), start_classifier(config, sqlite_store, "127.0.0.1:0")]
    try:
        for queue in ("grpc_workers_query", "grpc_workers_classifier"):
            assert REGISTRY.get_sample_value("visage_queue_depth", {"queue": queue}) == 0, queue
    finally:
        for service in services:
            service.stop(0)


def test_the_metrics_port_setting(monkeypatch):
    monkeypatch.delenv(metrics.METRICS_PORT_ENV, raising=False)
    assert metrics.metrics_port(50054) == 51054
    monkeypatch.setenv(metrics.METRICS_PORT_ENV, "0")
    assert metrics.metrics_port(50054) == 0
    monkeypatch.setenv(metrics.METRICS_PORT_ENV, "nine")
    with pytest.raises(ValueError, match="not a port number"):
        metrics.metrics_port(50054)
