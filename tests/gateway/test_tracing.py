"""OpenTelemetry traces through the real Envoy and real service processes: a REST call is
one trace (Envoy's span, then the service's server span as its child) exported to a real
OTLP collector; the span names the RPC and its status; event-driven work links back to the
request that caused it; and with no OTLP endpoint configured nothing of the SDK is loaded."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import uuid

import grpc
import numpy as np
import pytest
from visage.loopback import free_port
from gateway_stack import REPO, start_gateway
from grpc_health.v1 import health_pb2, health_pb2_grpc
from otlp_collector import Collector

from visage.config import Config
from visage.store.records import FaceRecord, ImageRecord
from visage.store import open_store
from visage.store.sqlite import SqliteStore
from visage.v1 import resources_pb2 as pb
from visage_gateway import tracing as gateway_tracing

READY_SECONDS = 120
SERVER_KIND = 2  # opentelemetry.proto.trace.v1.Span.SpanKind.SPAN_KIND_SERVER
CLIENT_KIND = 3
OTEL_VARIABLES = [name for name in os.environ if name.startswith("OTEL_")]


def _env(**extra: str) -> dict[str, str]:
    """This process's environment without any OTEL_* setting of the machine, plus `extra`."""
    return {**{k: v for k, v in os.environ.items() if k not in OTEL_VARIABLES}, **extra}


def _start_service(module: str, port: int, env: dict[str, str], log_path: Path) -> subprocess.Popen:
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", module], env=env, cwd=REPO,
                                   stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + READY_SECONDS
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        while True:
            assert process.poll() is None, f"{module} exited:\n{log_path.read_text()[-3000:]}"
            try:
                if health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status \
                        == health_pb2.HealthCheckResponse.SERVING:
                    return process
            except grpc.RpcError:
                pass
            assert time.monotonic() < deadline, f"{module} never served:\n{log_path.read_text()[-3000:]}"
            time.sleep(0.2)


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """A collector; the query, trainer and classifier services as processes (`python -m`, one
    SQLite store) and the real Envoy gateway, all exporting to it. Yields the gateway, the
    collector and the services' environment (for CLI calls)."""
    collector = Collector()
    work = tmp_path_factory.mktemp("tracing")
    ports = {"query": free_port(), "trainer": free_port(), "classifier": free_port()}
    # A short batch delay: services export a span about 0.1 s after it ends (force-flushing
    # is not possible from outside a process; Envoy exports every 5 s on its own).
    env = _env(OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint, OTEL_BSP_SCHEDULE_DELAY="100",
               VISAGE_DATA_DIR=str(work), VISAGE_STORE="sqlite", VISAGE_METRICS_PORT="0", VISAGE_WORKERS="1",
               VISAGE_TRAIN_DEBOUNCE_SECONDS="0.2",
               **{f"VISAGE_{name.upper()}_PORT": str(port) for name, port in ports.items()})
    processes = []
    try:
        for name in ("query", "trainer", "classifier"):  # the query service migrates the store first
            processes.append(_start_service(f"visage_{name}", ports[name], env, work / f"{name}.log"))
        gateway = start_gateway(ports, work / "gateway", extra_env={"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint})
        yield gateway, collector, env
        gateway.stop()
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=60)
        collector.stop()


def _server_span(collector: Collector, method: str, status: int):
    return collector.wait_for(lambda s: s.kind == SERVER_KIND and s.name == f"/visage.v1.QueryService/{method}"
                              and s.attributes.get("rpc.grpc.status_code") == status,
                              f"of the query service answering {method} with status {status}")


def _envoy_parent(collector: Collector, child):
    return collector.wait_for(lambda s: s.service == "visage-gateway" and s.trace_id == child.trace_id
                              and s.span_id == child.parent_span_id,
                              f"of Envoy in trace {child.trace_id} with span id {child.parent_span_id}")


def test_a_rest_call_is_one_trace_through_envoy_and_the_service(traced):
    gateway, collector, _ = traced
    status, created = gateway.json("POST", "/v1/personas", {"displayName": "Ada"})
    assert status == 200
    span = _server_span(collector, "CreatePersona", 0)
    assert span.service == "visage-query"  # the default name of `python -m visage_query`
    assert (span.attributes["rpc.system"], span.attributes["rpc.service"], span.attributes["rpc.method"]) == \
        ("grpc", "visage.v1.QueryService", "CreatePersona")
    envoy = _envoy_parent(collector, span)
    assert envoy.parent_span_id == ""  # the caller sent no traceparent: Envoy started the trace
    assert span.parent_span_id == envoy.span_id


def test_a_failed_call_records_its_status_in_both_spans(traced):
    gateway, collector, _ = traced
    status, error = gateway.json("GET", "/v1/personas/no-such-persona")
    assert status == 404 and error["code"] == grpc.StatusCode.NOT_FOUND.value[0]
    span = _server_span(collector, "GetPersona", grpc.StatusCode.NOT_FOUND.value[0])
    envoy = _envoy_parent(collector, span)
    assert envoy.attributes.get("http.status_code") == "404"
    assert envoy.attributes["grpc.path"] == "/visage.v1.QueryService/GetPersona"


def test_a_callers_traceparent_is_kept(traced):
    gateway, collector, _ = traced
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    status, _ = gateway.json("GET", "/v1/personas", headers={"traceparent": f"00-{trace_id}-{parent}-01"})
    assert status == 200
    envoy = collector.wait_for(lambda s: s.service == "visage-gateway" and s.trace_id == trace_id,
                               f"of Envoy in the caller's trace {trace_id}")
    assert envoy.parent_span_id == parent
    span = collector.wait_for(lambda s: s.kind == SERVER_KIND and s.trace_id == trace_id,
                              f"of the query service in the caller's trace {trace_id}")
    assert span.name == "/visage.v1.QueryService/ListPersonas" and span.parent_span_id == envoy.span_id


def test_training_started_by_an_event_links_to_the_request_that_appended_it(traced):
    gateway, collector, _ = traced
    trace_id = uuid.uuid4().hex  # this request's own trace, to tell its span from the others'
    status, _ = gateway.json("POST", "/v1/personas", {"displayName": "Grace"},
                             headers={"traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"})
    assert status == 200
    request = collector.wait_for(lambda s: s.name == "/visage.v1.QueryService/CreatePersona" and s.kind == SERVER_KIND
                                 and s.trace_id == trace_id, "of this CreatePersona")
    # PERSONA_CREATED carries the request's traceparent; the trainer's job (a trace of its
    # own: it may train on many requests' events) links to it.
    training = collector.wait_for(lambda s: s.name == "visage.training" and (request.trace_id, request.span_id)
                                  in s.links, f"of a training job linked to {request.span_id}")
    assert training.service == "visage-trainer" and training.trace_id != request.trace_id
    assert training.attributes["visage.trigger"] == "TRAINING_TRIGGER_EVENTS"
    assert training.attributes["visage.phase"] in {"TRAINING_PHASE_SUCCEEDED", "TRAINING_PHASE_FAILED"}


def test_the_classifier_handles_an_event_in_a_span_linked_to_the_request(traced):
    gateway, collector, _ = traced
    status, created = gateway.json("POST", "/v1/personas", {"displayName": "Hedy"})
    assert status == 200
    assert gateway.json("DELETE", f"/v1/personas/{created['personaId']}")[0] == 200
    # REST's DELETE is ErasePersona (it answers the erased ids).
    request = collector.wait_for(lambda s: s.name == "/visage.v1.QueryService/ErasePersona" and s.kind == SERVER_KIND,
                                 "of ErasePersona")
    handled = collector.wait_for(lambda s: s.name == "visage.classifier EVENT_TYPE_ERASED"
                                 and (request.trace_id, request.span_id) in s.links,
                                 f"of the classifier handling the erasure of {request.span_id}")
    assert handled.service == "visage-classifier"
    assert handled.attributes["visage.event_subject"] == created["personaId"]


def _put_faces_near(store: SqliteStore, centre: np.ndarray, count: int, rng) -> list[str]:
    """A synthetic image whose faces' embeddings lie close to `centre`; returns their ids."""
    image_id = uuid.uuid4().hex
    faces = [FaceRecord(f"{image_id}-{i}", image_id, i, (0, 0, 9, 9), [],
                        (centre + rng.normal(0, 0.02, 128)).astype(np.float32)) for i in range(count)]
    store.put_image(ImageRecord(image_id, "synthetic.jpg", "image/jpeg", 9, 9, 1, count, pb.IMAGE_STATUS_FACES_FOUND),
                    b"x", faces)
    return [face.face_id for face in faces]


def test_labels_lead_by_links_to_training_then_to_the_reclassification(traced):
    gateway, collector, env = traced
    store = SqliteStore(Config(data_dir=Path(env["VISAGE_DATA_DIR"])).sqlite_path)
    rng = np.random.default_rng(15)
    try:
        for name in ("Ida", "Joan"):
            status, persona = gateway.json("POST", "/v1/personas", {"displayName": name})
            assert status == 200
            face_ids = _put_faces_near(store, rng.normal(0, 0.3, 128), 8, rng)
            for face_id in face_ids:
                status, _ = gateway.json("POST", f"/v1/faces/{face_id}:label",
                                         {"personaId": persona["personaId"], "verdict": "VERDICT_BELONGS"})
                assert status == 200
    finally:
        store.close()
    # Labels arriving while a version trains may start another training, whose activation supersedes
    # the first one's re-classification (that run ends RUNNING): follow the chain back from the
    # run that completed.
    run = collector.wait_for(lambda s: s.name == "visage.reclassify"
                             and s.attributes.get("visage.state") == "RECLASSIFY_STATE_SUCCEEDED",
                             "of a re-classification run that completed")
    # The run is a child of the classifier's handling of MODEL_VERSION_ACTIVATED ...
    handled = collector.wait_for(lambda s: s.span_id == run.parent_span_id, "of the handling that started the run")
    assert handled.name == "visage.classifier EVENT_TYPE_MODEL_VERSION_ACTIVATED"
    assert run.trace_id == handled.trace_id and run.service == "visage-classifier"
    # ... which links to the training span the event was appended in ...
    training = collector.wait_for(lambda s: s.name == "visage.training" and (s.trace_id, s.span_id) in handled.links,
                                  "of the training job that activated the version")
    assert training.attributes.get("visage.activated") is True
    assert run.attributes["visage.model_version"] == training.attributes["visage.model_version"]
    # ... which links to the requests whose label (and persona) events it trained on.
    linked = [collector.wait_for(lambda s, link=link: (s.trace_id, s.span_id) == link, f"linked as {link}")
              for link in training.links]
    assert "/visage.v1.QueryService/LabelFace" in {span.name for span in linked}
    assert {span.name for span in linked} <= {f"/visage.v1.QueryService/{method}" for method in
                                              ("LabelFace", "CreatePersona", "ErasePersona")}


def test_a_cli_call_is_a_client_span_with_the_service_span_its_child(traced):
    _, collector, env = traced
    result = subprocess.run([sys.executable, "-m", "visage.cli", "personas", "create", "Linus"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    client = collector.wait_for(lambda s: s.service == "visage-client" and s.kind == CLIENT_KIND
                                and s.name == "/visage.v1.QueryService/CreatePersona", "of the CLI's call")
    server = collector.wait_for(lambda s: s.kind == SERVER_KIND and s.trace_id == client.trace_id,
                                f"of the query service in the CLI's trace {client.trace_id}")
    assert server.parent_span_id == client.span_id and server.name == client.name


_UNTRACED_SERVICE = """
import json, pathlib, sys
from visage import tracing
from visage.auth import client
from visage.config import Config
from visage.store import open_store
from visage.v1 import query_pb2, query_pb2_grpc
from visage_query.server import start

config = Config(data_dir=pathlib.Path(sys.argv[1]))
store = open_store(config)
service = start(config, store, "127.0.0.1:0")
with client.channel(f"127.0.0.1:{service.port}") as channel:  # sends VISAGE_TOKEN
    query_pb2_grpc.QueryServiceStub(channel).CreatePersona(
        query_pb2.CreatePersonaRequest(persona={"display_name": "Ada"}), timeout=30)
service.stop(0)
events = store.read_events("", 100)
print(json.dumps({
    "sdk_loaded": sorted(m for m in sys.modules if m.startswith("opentelemetry.sdk")),
    "instrumentation_loaded": "opentelemetry.instrumentation.grpc" in sys.modules,
    "provider_installed": tracing._provider is not None,
    "interceptors": len(tracing.server_interceptors()),
    "events_with_traceparent": sum(tracing.TRACEPARENT in e.attributes for e in events),
    "events": len(events),
}))
"""


@pytest.mark.parametrize("otel", [{}, {"OTEL_SERVICE_NAME": "visage-query", "OTEL_BSP_SCHEDULE_DELAY": "100"},
                                  {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_SDK_DISABLED": "true"},
                                  {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_TRACES_EXPORTER": "none"}],
                         ids=["nothing", "no-endpoint", "sdk-disabled", "exporter-none"])
def test_without_an_endpoint_nothing_is_loaded_installed_or_exported(tmp_path, otel):
    result = subprocess.run([sys.executable, "-c", _UNTRACED_SERVICE, str(tmp_path)], env=_env(**otel), cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"sdk_loaded": [], "instrumentation_loaded": False, "provider_installed": False,
                      "interceptors": 0, "events_with_traceparent": 0, "events": report["events"]}
    assert report["events"] >= 1  # PERSONA_CREATED was appended, without a traceparent


def test_the_gateway_reads_the_standard_otlp_variables():
    assert gateway_tracing.Collector.from_env({}) is None
    assert gateway_tracing.Collector.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:1",
                                               "OTEL_SDK_DISABLED": "true"}) is None
    collector = gateway_tracing.Collector.from_env({
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel-collector.monitoring:4317",
        "OTEL_EXPORTER_OTLP_HEADERS": "api-key=a%3Db,x-team=faces",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"})
    assert (collector.host, collector.port, collector.tls) == ("otel-collector.monitoring", 4317, False)
    assert collector.headers == (("api-key", "a=b"), ("x-team", "faces"))
    assert collector.sampling_percent == 25.0 and collector.service_name == "visage-gateway"
    # The traces-only variable wins; like the SDK's exporter, no scheme means TLS unless insecure.
    traces_only = gateway_tracing.Collector.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:1",
                                                      "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "b.example:4318",
                                                      "OTEL_SERVICE_NAME": "edge"})
    assert (traces_only.host, traces_only.port, traces_only.tls, traces_only.service_name) == \
        ("b.example", 4318, True, "edge")
    with pytest.raises(ValueError, match="OTEL_TRACES_SAMPLER_ARG"):
        gateway_tracing.Collector.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:1",
                                            "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"})
