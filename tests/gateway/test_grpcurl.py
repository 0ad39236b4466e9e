"""grpcurl (the current one, from `make grpcurl`) lists and calls every
service by reflection: directly and through the Envoy gateway."""
from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import pytest

from visage.server import SERVICE_NAMES

GRPCURL = Path(__file__).resolve().parents[2] / ".tools/bin/grpcurl"
pytestmark = pytest.mark.skipif(not GRPCURL.is_file(), reason="grpcurl not installed: run `make grpcurl`")

# One cheap, real call per service.
CALLS = {
    "query": ("ListPersonas", {"page_size": 5}, "personas"),
    "trainer": ("ListTrainingJobs", {"page_size": 5}, None),
    "classifier": ("ClassifyEmbeddings", {"embeddings": [{"values": [0.01] * 128}]}, "predictions"),
    "ingest": ("IngestImage", None, "image"),
}


def grpcurl(*args: str, stdin: str | None = None) -> str:
    token = ["-rpc-header", f"authorization: Bearer {os.environ['VISAGE_TOKEN']}"]
    result = subprocess.run([str(GRPCURL), "-plaintext", "-emit-defaults", "-max-time", "60", *token, *args], input=stdin,
                            capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, f"grpcurl {' '.join(args)[:200]}: {result.stderr}"
    return result.stdout


def request_for(service: str, faces_dir: Path) -> dict:
    _, body, _ = CALLS[service]
    if service == "ingest":
        photo = faces_dir / "presidents/obama" / sorted(p.name for p in (faces_dir / "presidents/obama").iterdir())[0]
        return {"content": base64.b64encode(photo.read_bytes()).decode(), "filename": photo.name}
    return body


@pytest.mark.parametrize("service", sorted(SERVICE_NAMES))
def test_grpcurl_lists_and_calls_each_service_directly(service, mesh, faces_dir):
    address = f"127.0.0.1:{mesh.ports[service]}"
    listed = grpcurl(address, "list").split()
    assert SERVICE_NAMES[service] in listed and "grpc.health.v1.Health" in listed
    method, _, expected_field = CALLS[service]
    answer = json.loads(grpcurl("-d", "@", address, f"{SERVICE_NAMES[service]}/{method}",
                                stdin=json.dumps(request_for(service, faces_dir))))
    assert expected_field is None or expected_field in answer


@pytest.mark.parametrize("service", sorted(SERVICE_NAMES))
def test_grpcurl_reflects_and_calls_each_service_through_envoy(service, gateway, faces_dir):
    """Reflection has one path for all services: x-visage-service picks which answers."""
    address = f"127.0.0.1:{gateway.port}"
    pick = ["-reflect-header", f"x-visage-service: {service}"]
    assert SERVICE_NAMES[service] in grpcurl(*pick, address, "list").split()
    described = grpcurl(*pick, address, "describe", SERVICE_NAMES[service])
    method, _, expected_field = CALLS[service]
    assert f"rpc {method}" in described
    answer = json.loads(grpcurl(*pick, "-d", "@", address, f"{SERVICE_NAMES[service]}/{method}",
                                stdin=json.dumps(request_for(service, faces_dir))))
    assert expected_field is None or expected_field in answer


def test_grpc_errors_pass_through_envoy_unchanged(gateway):
    result = subprocess.run([str(GRPCURL), "-plaintext", "-H", f"authorization: Bearer {os.environ['VISAGE_TOKEN']}",
                             "-d", '{"persona_id": "nobody"}', f"127.0.0.1:{gateway.port}",
                             "visage.v1.QueryService/GetPersona"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "NotFound" in result.stderr and "nobody" in result.stderr
