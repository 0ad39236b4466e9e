"""Tracing benchmark (issue 15): what OpenTelemetry tracing adds to a unary RPC at the
service. The query service is started twice in this process by its own `start` (the
build_server chain): first with no OTLP endpoint (tracing off: no interceptor, no SDK),
then with OTEL_EXPORTER_OTLP_ENDPOINT pointing at an OTLP collector in this process that
accepts and drops every span (tracing on: a server span per call, batched and exported
over gRPC). GetPersona is called on both in alternating rounds from one client; the table
gives each round's p50s and the ratio on/off. Then the same end to end: REST ListPersonas
through the real gateway (`python -m visage_gateway`) to `python -m visage_query`, one stack
untraced and one with both Envoy and the service exporting to that collector. Measured, not asserted. It runs in a process
of its own: a tracer provider, once installed, stays for the life of a process, and the
benches after this one must run untraced."""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from visage import tracing
from visage.config import Config
from visage.store.sqlite import SqliteStore
from visage.v1 import query_pb2, query_pb2_grpc
from visage_query import server as query_server

from bench import bench_gateway
from bench.bench_auth import p50_ms, time_calls

CALLS = int(os.environ.get("BENCH_TRACING_CALLS", "2000"))  # per side per round
ROUNDS = 7
CHILD_ENV = "BENCH_TRACING_CHILD"


class DroppingCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP/gRPC endpoint that counts the spans it receives and keeps none."""

    def __init__(self) -> None:
        self.spans = 0
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def Export(self, request, context):
        self.spans += sum(len(scope.spans) for resource in request.resource_spans for scope in resource.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def rounds(store: SqliteStore, collector: DroppingCollector) -> tuple[list[float], list[float]]:
    """p50s in ms per round: tracing off, tracing on."""
    config = Config(data_dir=Path(tempfile.gettempdir()))
    off = query_server.start(config, store, "127.0.0.1:0")  # before any endpoint is set: no tracing
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{collector.port}"
    on = query_server.start(config, store, "127.0.0.1:0")  # installs the SDK and the interceptor
    persona = store.create_persona("Bench")
    request = query_pb2.GetPersonaRequest(persona_id=persona.persona_id)
    token = (("authorization", f"Bearer {os.environ['VISAGE_TOKEN']}"),)
    p50s: tuple[list[float], list[float]] = ([], [])
    try:
        with grpc.insecure_channel(f"127.0.0.1:{off.port}") as a, grpc.insecure_channel(f"127.0.0.1:{on.port}") as b:
            stubs = [query_pb2_grpc.QueryServiceStub(channel) for channel in (a, b)]
            for stub in stubs:  # warm-up
                time_calls(lambda: stub.GetPersona(request, timeout=10, metadata=token), 200)
            for _ in range(ROUNDS):
                for stub, into in zip(stubs, p50s):
                    into.append(p50_ms(time_calls(lambda: stub.GetPersona(request, timeout=10, metadata=token),
                                                  CALLS)))
    finally:
        off.stop(grace=0)
        on.stop(grace=0)
        tracing.force_flush()
    return p50s


def main() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    subprocess.run([sys.executable, "-m", "bench.bench_tracing"], env={**env, CHILD_ENV: "1"}, check=True,
                   cwd=Path(__file__).resolve().parents[1])


def start_stack(work: Path, collector_endpoint: str | None) -> bench_gateway.Stack:
    """The query service and the gateway as processes, traced when given a collector."""
    if collector_endpoint:
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector_endpoint
    try:
        where = bench_gateway.Placement("shared cores")
        stack = bench_gateway.start_query_service(work, where)
        bench_gateway.start_gateway(stack, where)
    finally:
        os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    return stack


def rest_rounds(tmp: Path, collector: DroppingCollector) -> tuple[list[float], list[float]]:
    """p50s in ms per round of REST ListPersonas through the gateway: untraced, traced."""
    stacks = []
    try:
        for name, endpoint in (("off", None), ("on", f"http://127.0.0.1:{collector.port}")):
            (tmp / name).mkdir()
            stacks.append(start_stack(tmp / name, endpoint))
        clients = [bench_gateway.LeanHttpClient(stack.gateway_port) for stack in stacks]
        deadline = time.monotonic() + 120
        for client in clients:  # until the service behind each gateway answers
            while client.get("/v1/personas")[0] != 200:
                if time.monotonic() > deadline:
                    raise RuntimeError("the query service behind the gateway never answered")
                time.sleep(0.2)
            time_calls(lambda: client.get("/v1/personas"), 200)
        p50s: tuple[list[float], list[float]] = ([], [])
        for _ in range(ROUNDS):
            for client, into in zip(clients, p50s):
                into.append(p50_ms(time_calls(lambda: client.get("/v1/personas"), CALLS)))
        for client in clients:
            client.close()
        return p50s
    finally:
        for stack in stacks:
            stack.stop()


def table(title: str, off: list[float], on: list[float], collector: DroppingCollector) -> None:
    print(f"\n{title}")
    print(f"{'round':<8}{'off p50 ms':>12}{'on p50 ms':>12}{'added ms':>12}{'ratio':>9}")
    for i, (a, b) in enumerate(zip(off, on), 1):
        print(f"{i:<8}{a:>12.3f}{b:>12.3f}{b - a:>12.3f}{b / a:>9.3f}")
    print(f"median of rounds: added {statistics.median([b - a for a, b in zip(off, on)]):.3f} ms, "
          f"ratio {statistics.median([b / a for a, b in zip(off, on)]):.3f} "
          f"(spans received by the collector so far: {collector.spans})")


def measure() -> None:
    collector = DroppingCollector()
    try:
        with tempfile.TemporaryDirectory(prefix="visage-bench-tracing-") as tmp:
            store = SqliteStore(Path(tmp) / "bench.db")
            store.migrate()
            off, on = rounds(store, collector)
            store.close()
            table(f"GetPersona at the service, {ROUNDS} rounds x {CALLS} calls per side: tracing off vs on "
                  f"(a server span per call, exported over OTLP/gRPC to a collector in this process)", off, on, collector)
            rest_off, rest_on = rest_rounds(Path(tmp), collector)
            table(f"REST ListPersonas through the gateway (Envoy + query service processes, shared cores), {ROUNDS} "
                  f"rounds x {CALLS} calls: neither traced vs Envoy and service both tracing", rest_off, rest_on,
                  collector)
    finally:
        collector.server.stop(0)


if __name__ == "__main__":
    from bench.__main__ import use_a_bench_issuer
    use_a_bench_issuer()
    measure() if os.environ.get(CHILD_ENV) else main()
