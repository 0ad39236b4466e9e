"""REST through the Envoy gateway vs direct gRPC, for one small query RPC
(GetPersona) on loopback: p50/p99 latency and req/s, and the latency the
gateway adds at p50 (target <= 0.2 ms). Baseline: direct gRPC from Python.

Both clients run sequentially (one request in flight: latency, not the GIL-bound
Python server's throughput) on keep-alive connections, for a bounded count."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from visage.config import Config
from visage.store.sqlite import SqliteStore
from visage.v1 import query_pb2, query_pb2_grpc
from visage.v1 import resources_pb2 as pb
from visage_query import server as query_server

REQUESTS = int(os.environ.get("VISAGE_BENCH_GATEWAY_REQUESTS", "3000"))
WARMUP = 300
ROUNDS = 3  # alternate the two clients so background load hits both alike
TARGET_ADDED_MS = 0.2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def time_calls(call, count: int) -> list[float]:
    for _ in range(WARMUP):
        call()
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


def start_gateway(query_port: int, work: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = dict(os.environ, VISAGE_DATA_DIR=str(work), VISAGE_GATEWAY_PORT=str(port),
               VISAGE_QUERY_PORT=str(query_port))
    # Access logging off: measure the proxy, not a log line per request on stdout.
    process = subprocess.Popen([sys.executable, "-c", GATEWAY_WITHOUT_ACCESS_LOG], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                return process, port
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("gateway did not start")


GATEWAY_WITHOUT_ACCESS_LOG = """
import dataclasses, sys
from visage_gateway import envoy_config, __main__ as gateway
original = envoy_config.GatewaySettings.from_config
envoy_config.GatewaySettings.from_config = classmethod(
    lambda cls, config, env=None: dataclasses.replace(original(config, env), access_log=False))
sys.exit(gateway.main())
"""


def row(name: str, samples: list[float]) -> tuple[str, float, float, float]:
    return name, percentile(samples, 0.5) * 1e3, percentile(samples, 0.99) * 1e3, len(samples) / sum(samples)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store = SqliteStore(work / "visage.db")
        store.migrate()
        query = query_server.start(Config(data_dir=work), store, "127.0.0.1:0")
        gateway, gateway_port = start_gateway(query.port, work)
        try:
            channel = grpc.insecure_channel(f"127.0.0.1:{query.port}")
            stub = query_pb2_grpc.QueryServiceStub(channel)
            persona = stub.CreatePersona(query_pb2.CreatePersonaRequest(persona=pb.Persona(display_name="Bench")))
            request = query_pb2.GetPersonaRequest(persona_id=persona.persona_id)
            rest = http.client.HTTPConnection("127.0.0.1", gateway_port)
            path = f"/v1/personas/{persona.persona_id}"

            def via_gateway() -> None:
                rest.request("GET", path)
                response = rest.getresponse()
                assert response.status == 200 and json.loads(response.read())["personaId"] == persona.persona_id

            def direct() -> None:
                stub.GetPersona(request, timeout=5)

            # The same gRPC client through Envoy: the proxy hop alone, no JSON, no HTTP/1 client.
            proxied_channel = grpc.insecure_channel(f"127.0.0.1:{gateway_port}")
            proxied_stub = query_pb2_grpc.QueryServiceStub(proxied_channel)

            def grpc_via_gateway() -> None:
                proxied_stub.GetPersona(request, timeout=5)

            direct_samples, gateway_samples, proxied_samples = [], [], []
            for _ in range(ROUNDS):
                direct_samples += time_calls(direct, REQUESTS // ROUNDS)
                gateway_samples += time_calls(via_gateway, REQUESTS // ROUNDS)
                proxied_samples += time_calls(grpc_via_gateway, REQUESTS // ROUNDS)
            rest.close()
            channel.close()
            proxied_channel.close()
        finally:
            gateway.send_signal(signal.SIGTERM)
            gateway.wait(timeout=20)
            query.stop(grace=0)
            store.close()

    rows = [row("direct gRPC (baseline)", direct_samples), row("REST via Envoy", gateway_samples),
            row("gRPC via Envoy", proxied_samples)]
    print(f"GetPersona on loopback, {len(direct_samples)} sequential calls each, one connection")
    print(f"{'path':<24}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}")
    for name, p50, p99, rate in rows:
        print(f"{name:<24}{p50:>10.3f}{p99:>10.3f}{rate:>10.0f}")
    added = rows[1][1] - rows[0][1]
    print(f"added latency at p50: {added:.3f} ms (target <= {TARGET_ADDED_MS} ms: "
          f"{'met' if added <= TARGET_ADDED_MS else 'NOT met'}); p50 ratio gateway/direct {rows[1][1] / rows[0][1]:.2f}x; "
          f"req/s ratio {rows[1][3] / rows[0][3]:.2f}x")
    print(f"of which the proxy hop (gRPC via Envoy - direct): {rows[2][1] - rows[0][1]:.3f} ms at p50")


if __name__ == "__main__":
    main()
