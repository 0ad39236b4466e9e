"""`make run` (python -m visage.mesh): every service and the gateway come up as
real processes on embedded defaults, answer through Envoy, and stop together.
On a fresh data dir it makes the local issuer and prints a sign-in link whose
token the gateway accepts; labels name that link's user."""
from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from visage.loopback import free_ports

MESH_READY_SECONDS = 180


def http(method: str, url: str, body: dict | None = None, token: str = "") -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read()


def wait_for_login_link(url: str, mesh: subprocess.Popen, log: Path) -> str:
    """The token of the sign-in link the mesh prints once Envoy answers."""
    deadline = time.monotonic() + MESH_READY_SECONDS
    while time.monotonic() < deadline:
        assert mesh.poll() is None, "the mesh exited while starting"
        link = re.search(re.escape(url) + r"/#token=([A-Za-z0-9._-]+)", log.read_text())
        try:
            if link and http("GET", f"{url}/v1/personas", token=link.group(1))[0] == 200:
                return link.group(1)
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"gateway did not answer or no sign-in link was printed:\n{log.read_text()[-3000:]}")


def test_mesh_starts_everything_serves_through_envoy_and_stops_cleanly(tmp_path: Path, faces_dir: Path):
    names = ["ingest", "classifier", "trainer", "query", "gateway"]
    ports = dict(zip(names, free_ports(len(names))))
    # A new user's machine: no issuer and no token from the test session.
    env = {k: v for k, v in os.environ.items() if k not in ("VISAGE_AUTH_DIR", "VISAGE_TOKEN")}
    env.update({"VISAGE_DATA_DIR": str(tmp_path / "data"), "VISAGE_WORKERS": "1",
                **{f"VISAGE_{name.upper()}_PORT": str(port) for name, port in ports.items()}})
    log = (tmp_path / "mesh.log").open("w")
    mesh = subprocess.Popen([sys.executable, "-m", "visage.mesh"], env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{ports['gateway']}"
    try:
        token = wait_for_login_link(url, mesh, tmp_path / "mesh.log")
        assert (tmp_path / "data/auth/signing-key.pem").is_file()
        for name in ("ingest", "classifier", "trainer", "query"):
            with grpc.insecure_channel(f"127.0.0.1:{ports[name]}") as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, name

        status, body = http("POST", f"{url}/v1/personas", {"display_name": "Penny"}, token)
        assert status == 200 and json.loads(body)["displayName"] == "Penny"
        persona_id = json.loads(body)["personaId"]
        status, page = http("GET", f"{url}/")
        assert status == 200 and b"<html" in page.lower()
        image = sorted((faces_dir / "bbt/penny").iterdir())[0].read_bytes()
        status, body = http("POST", f"{url}/v1/images:ingest", {"content": base64.b64encode(image).decode()}, token)
        assert status == 200 and len(json.loads(body)["faces"]) == 1
        face_id = json.loads(body)["faces"][0]["faceId"]
        status, body = http("POST", f"{url}/v1/faces/{face_id}:label",
                            {"personaId": persona_id, "verdict": "VERDICT_BELONGS"}, token)
        subject = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))["sub"]
        assert status == 200 and json.loads(body)["labels"][0]["labelledBy"] == subject
        # The CLI finds the local issuer in the data dir by itself.
        created = subprocess.run([sys.executable, "-m", "visage.cli", "token", "create", "--role", "viewer",
                                  "--subject", "vera"], env=env, capture_output=True, text=True, timeout=60)
        assert created.returncode == 0, created.stderr
        assert http("GET", f"{url}/v1/personas", token=created.stdout.splitlines()[-1])[0] == 200
    finally:
        mesh.send_signal(signal.SIGTERM)
        exit_code = mesh.wait(timeout=60)
        log.close()
    assert exit_code == 0, (tmp_path / "mesh.log").read_text()[-3000:]
    # Nothing is left listening: every child went down with the supervisor.
    for name, port in ports.items():
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"{name} still listening on {port}"
