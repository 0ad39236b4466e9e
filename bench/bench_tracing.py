"""Tracing benchmark (issue 15): what OpenTelemetry tracing adds to a unary RPC at the
service. The query service is started twice in this process by its own `start` (the
build_server chain): first with no OTLP endpoint (tracing off: no interceptor, no SDK),
then with OTEL_EXPORTER_OTLP_ENDPOINT pointing at an OTLP collector in this process that
accepts and drops every span (tracing on: a server span per call, batched and exported
over gRPC). GetPersona is called on both in alternating rounds from one client; the table
gives each round's p50s and the ratio on/off. Measured, not asserted. It runs in a process
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


def time_calls(call, count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return samples


def p50_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


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


def measure() -> None:
    collector = DroppingCollector()
    try:
        with tempfile.TemporaryDirectory(prefix="visage-bench-tracing-") as tmp:
            store = SqliteStore(Path(tmp) / "bench.db")
            store.migrate()
            off, on = rounds(store, collector)
            store.close()
    finally:
        os.environ.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        collector.server.stop(0)
    print(f"\nGetPersona at the service, {ROUNDS} rounds x {CALLS} calls per side: tracing off vs on "
          f"(a server span per call, exported over OTLP/gRPC to a collector in this process)")
    print(f"{'round':<8}{'off p50 ms':>12}{'on p50 ms':>12}{'added ms':>12}{'ratio':>9}")
    for i, (a, b) in enumerate(zip(off, on), 1):
        print(f"{i:<8}{a:>12.3f}{b:>12.3f}{b - a:>12.3f}{b / a:>9.3f}")
    ratios = [b / a for a, b in zip(off, on)]
    print(f"median of rounds: added {statistics.median([b - a for a, b in zip(off, on)]):.3f} ms, "
          f"ratio {statistics.median(ratios):.3f} (spans received by the collector: {collector.spans})")


if __name__ == "__main__":
    from bench.__main__ import use_a_bench_issuer
    use_a_bench_issuer()
    measure() if os.environ.get(CHILD_ENV) else main()
