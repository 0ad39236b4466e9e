"""CPU placement (VISAGE_GATEWAY_CPUS, VISAGE_SERVICE_CPUS): Envoy and a
service run pinned to the cores they were given and still serve; a bad CPU
list stops the process with a message that names the variable."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from visage.loopback import free_port
from gateway_stack import REPO, start_gateway
from grpc_health.v1 import health_pb2, health_pb2_grpc

from visage.placement import PlacementError, parse_cpu_list

AVAILABLE = sorted(os.sched_getaffinity(0))
GATEWAY_CPU, SERVICE_CPU = AVAILABLE[-1], AVAILABLE[0]


def allowed_cpus(pid: int) -> frozenset[int]:
    """The CPUs a process's threads may use (every thread must agree)."""
    found = set()
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        line = next(line for line in status.read_text().splitlines() if line.startswith("Cpus_allowed_list:"))
        found.add(parse_cpu_list(line.split(":", 1)[1].strip()))
    assert len(found) == 1, f"threads of {pid} differ: {found}"
    return found.pop()


def envoy_child(parent: int) -> int:
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def test_cpu_lists_parse_and_bad_ones_are_refused():
    assert parse_cpu_list(str(SERVICE_CPU)) == {SERVICE_CPU}
    assert parse_cpu_list(f"{SERVICE_CPU}-{SERVICE_CPU}, {GATEWAY_CPU}") == {SERVICE_CPU, GATEWAY_CPU}
    assert parse_cpu_list(",".join(map(str, AVAILABLE))) == set(AVAILABLE)
    for bad in ("x", "1-0", "-1", "1,", str(max(AVAILABLE) + 1000)):
        with pytest.raises(PlacementError):
            parse_cpu_list(bad)


@pytest.fixture
def pinned_query(tmp_path):
    port = free_port()
    env = dict(os.environ, VISAGE_DATA_DIR=str(tmp_path / "query"), VISAGE_QUERY_PORT=str(port),
               VISAGE_SERVICE_CPUS=str(SERVICE_CPU))
    process = subprocess.Popen([sys.executable, "-m", "visage_query"], env=env, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), wait_for_ready=True,
                                                           timeout=60)
    yield process, port, health
    process.terminate()
    process.wait(timeout=30)


def test_a_pinned_service_and_a_pinned_gateway_serve(pinned_query, tmp_path):
    query, query_port, health = pinned_query
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert allowed_cpus(query.pid) == {SERVICE_CPU}
    gateway = start_gateway({"query": query_port}, tmp_path / "gateway", {"VISAGE_GATEWAY_CPUS": str(GATEWAY_CPU)})
    try:
        envoy = envoy_child(gateway.process.pid)
        assert allowed_cpus(envoy) == {GATEWAY_CPU}
        command = Path(f"/proc/{envoy}/cmdline").read_bytes().split(b"\0")
        assert command[command.index(b"--concurrency") + 1] == b"1"  # one worker per pinned core
        status, body = gateway.json("POST", "/v1/personas", {"displayName": "Pinned"})
        assert status == 200 and body["displayName"] == "Pinned"
    finally:
        assert gateway.stop() == 0


@pytest.mark.parametrize("module, variable", [("visage_query", "VISAGE_SERVICE_CPUS"),
                                              ("visage_gateway", "VISAGE_GATEWAY_CPUS")])
def test_a_bad_cpu_list_stops_the_process_with_a_clear_message(module, variable, tmp_path):
    env = dict(os.environ, VISAGE_DATA_DIR=str(tmp_path), VISAGE_QUERY_PORT=str(free_port()),
               VISAGE_GATEWAY_PORT=str(free_port()), **{variable: "0-nope"})
    result = subprocess.run([sys.executable, "-m", module], env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert variable in result.stderr and "not a CPU list" in result.stderr
