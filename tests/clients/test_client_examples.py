"""The three client examples (clients/python, clients/go, clients/typescript) against a
`make run` mesh started here (real processes, a fresh data dir, the sign-in link's token):
the shared photos are ingested and labelled through the Python client, the trainer
activates a version, and each example names the people of a group photo nobody labelled,
directly and through Envoy. VerifyFaces and FindSimilarFaces answer REST through Envoy.
The Go and TypeScript examples are built by `make clients` (part of `make test`)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from tests.conftest import REPO, missing_prerequisite
from tests.mesh.test_mesh import http, wait_for_login_link
from visage.loopback import free_ports
from visage.client import Client
from visage.v1 import resources_pb2 as pb

SCENE, SCENE_PEOPLE = "bbt1.jpg", ["raj", "leonard", "howard", "sheldon"]  # left to right
GO_EXAMPLE = REPO / "build/clients/bin/classify-go"
TS_EXAMPLE = REPO / "build/clients/typescript/dist/classify.js"
HANG_GUARD_SECONDS = 300  # a loaded 2-core machine trains slowly; the answer, not the time, is checked


@pytest.fixture(scope="module")
def mesh(tmp_path_factory, faces_dir: Path):
    """A running mesh whose active version was trained on the bbt crops (labelled by their
    folder's name) and the presidents: (ports, admin token, persona ids by name, face ids by file)."""
    tmp = tmp_path_factory.mktemp("clients-mesh")
    names = ["ingest", "classifier", "trainer", "query", "gateway"]
    ports = dict(zip(names, free_ports(len(names))))
    env = {k: v for k, v in os.environ.items() if k not in ("VISAGE_AUTH_DIR", "VISAGE_TOKEN")}
    env.update({"VISAGE_DATA_DIR": str(tmp / "data"), "VISAGE_WORKERS": "1",
                **{f"VISAGE_{name.upper()}_PORT": str(port) for name, port in ports.items()}})
    log_path = tmp / "mesh.log"
    mesh = subprocess.Popen([sys.executable, "-m", "visage.mesh"], env=env, stdout=log_path.open("w"),
                            stderr=subprocess.STDOUT)
    try:
        token = wait_for_login_link(f"http://127.0.0.1:{ports['gateway']}", mesh, log_path)
        services = {name: f"127.0.0.1:{port}" for name, port in ports.items() if name != "gateway"}
        with Client(addresses=services, token=token, timeout=120) as visage:
            personas, faces = {}, {}
            photos = sorted((faces_dir / "bbt").glob("*/*")) + sorted((faces_dir / "presidents").glob("*/*"))
            for photo in photos:
                [face] = visage.ingest_image(photo.read_bytes(), photo.name).faces
                name = photo.parent.name
                if name not in personas:
                    personas[name] = visage.create_persona(persona=pb.Persona(display_name=name)).persona_id
                visage.label_face(face_id=face.face_id, persona_id=personas[name], verdict=pb.VERDICT_BELONGS)
                faces[f"{name}/{photo.name}"] = face.face_id
            version = wait_for(lambda: trained_on(visage, len(photos)), "a version trained on every label")
            wait_for(lambda: visage.classify_embeddings([[0.0] * 128]).model_version == version,
                     "the classifier to serve it")
        yield ports, token, personas, faces
    finally:
        mesh.send_signal(signal.SIGINT)
        try:
            mesh.wait(timeout=60)
        except subprocess.TimeoutExpired:
            mesh.kill()


def trained_on(visage: Client, labels: int) -> int:
    try:
        active = visage.get_active_model_version()
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND, error
        return 0
    return active.version if active.lineage.label_count == labels else 0


def wait_for(condition, what: str):
    deadline = time.monotonic() + HANG_GUARD_SECONDS
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
    return result


def names_printed(command: list[str], token: str) -> list[str]:
    done = subprocess.run(command, env={**os.environ, "VISAGE_TOKEN": token}, capture_output=True, text=True,
                          timeout=HANG_GUARD_SECONDS, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return [line.split("\t")[0] for line in done.stdout.splitlines()]


def built(path: Path) -> Path:
    if not path.exists():
        missing_prerequisite(f"{path.relative_to(REPO)} is not built", "make clients")
    return path


@pytest.mark.parametrize("via", ["classifier", "gateway"])
def test_python_example_prints_the_names(mesh, faces_dir, via):
    ports, token, _, _ = mesh
    command = [sys.executable, "clients/python/classify.py", str(faces_dir / "scenes" / SCENE),
               "--addr", f"127.0.0.1:{ports[via]}"]
    assert names_printed(command, token) == SCENE_PEOPLE


@pytest.mark.parametrize("via", ["classifier", "gateway"])
def test_go_example_prints_the_names(mesh, faces_dir, via):
    ports, token, _, _ = mesh
    command = [str(built(GO_EXAMPLE)), "-addr", f"127.0.0.1:{ports[via]}", str(faces_dir / "scenes" / SCENE)]
    assert names_printed(command, token) == SCENE_PEOPLE


@pytest.mark.parametrize("via", ["classifier", "gateway"])
def test_typescript_example_prints_the_names(mesh, faces_dir, via):
    ports, token, _, _ = mesh
    command = ["node", str(built(TS_EXAMPLE)), "--addr", f"127.0.0.1:{ports[via]}", str(faces_dir / "scenes" / SCENE)]
    assert names_printed(command, token) == SCENE_PEOPLE


def test_verify_and_find_similar_over_rest(mesh):
    ports, token, personas, faces = mesh
    url = f"http://127.0.0.1:{ports['gateway']}"
    status, body = http("POST", f"{url}/v1/faces:verify", {"face": {"faceId": faces["raj/raj1.png"]},
                                                          "otherFace": {"faceId": faces["raj/raj2.png"]}}, token)
    answer = json.loads(body)
    assert status == 200 and answer["samePerson"] is True and answer["basis"] == "VERIFY_BASIS_MODEL"
    status, body = http("POST", f"{url}/v1/faces:verify", {"face": {"faceId": faces["raj/raj1.png"]},
                                                          "personaId": personas["penny"]}, token)
    assert status == 200 and not json.loads(body).get("samePerson", False)
    status, body = http("POST", f"{url}/v1/faces:findSimilar", {"faceId": faces["obama/obama1.jpg"],
                                                               "pageSize": 2}, token)
    similar = json.loads(body)["faces"]
    assert status == 200 and {f["faceId"] for f in similar} == {faces["obama/obama-480p.jpg"], faces["obama/obama2.jpg"]}
    assert all(f["personaId"] == personas["obama"] for f in similar)
