"""`make run` (python -m visage.mesh): every service and the gateway come up as
real processes on embedded defaults, answer through Envoy, and stop together."""
from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

MESH_READY_SECONDS = 180


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def http(method: str, url: str, body: dict | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read()


def wait_for_gateway(url: str, mesh: subprocess.Popen) -> None:
    deadline = time.monotonic() + MESH_READY_SECONDS
    while time.monotonic() < deadline:
        assert mesh.poll() is None, "the mesh exited while starting"
        try:
            if http("GET", f"{url}/v1/personas")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError("gateway did not answer")


def test_mesh_starts_everything_serves_through_envoy_and_stops_cleanly(tmp_path: Path, faces_dir: Path):
    names = ["ingest", "classifier", "trainer", "query", "gateway"]
    ports = dict(zip(names, free_ports(len(names))))
    env = {**os.environ, "VISAGE_DATA_DIR": str(tmp_path / "data"), "VISAGE_WORKERS": "1",
           **{f"VISAGE_{name.upper()}_PORT": str(port) for name, port in ports.items()}}
    log = (tmp_path / "mesh.log").open("w")
    mesh = subprocess.Popen([sys.executable, "-m", "visage.mesh"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{ports['gateway']}"
    try:
        wait_for_gateway(url, mesh)
        for name in ("ingest", "classifier", "trainer", "query"):
            with grpc.insecure_channel(f"127.0.0.1:{ports[name]}") as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, name

        status, body = http("POST", f"{url}/v1/personas", {"display_name": "Penny"})
        assert status == 200 and json.loads(body)["displayName"] == "Penny"
        status, page = http("GET", f"{url}/")
        assert status == 200 and b"<html" in page.lower()
        image = sorted((faces_dir / "bbt/penny").iterdir())[0].read_bytes()
        status, body = http("POST", f"{url}/v1/images:ingest", {"content": base64.b64encode(image).decode()})
        assert status == 200 and len(json.loads(body)["faces"]) == 1
    finally:
        mesh.send_signal(signal.SIGTERM)
        exit_code = mesh.wait(timeout=60)
        log.close()
    assert exit_code == 0, (tmp_path / "mesh.log").read_text()[-3000:]
    # Nothing is left listening: every child went down with the supervisor.
    for name, port in ports.items():
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"{name} still listening on {port}"
