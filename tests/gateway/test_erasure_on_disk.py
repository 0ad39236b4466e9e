"""Erased means unreadable in every file the SQLite store writes (issue 25, finding 3):
after DELETE /v1/images/{id} (through Envoy) and DeletePersona(erase_faces) (direct
gRPC), sampled chunks of the image's stored bytes, its faces' embeddings, its file name
and the persona's name are in neither visage.db nor visage.db-wal. They used to stay
(in the WAL's old frames and the database's free pages) until a later checkpoint.
Waits are for the condition, with a hang guard; nothing asserts on time."""
from __future__ import annotations

import base64
import sqlite3
import time
import uuid
from pathlib import Path

import grpc

from visage.v1 import query_pb2, query_pb2_grpc

HANG_GUARD_SECONDS = 120
SAMPLES = 52
CHUNK = 24


def store_files(db: Path) -> list[Path]:
    return [path for path in (db, Path(f"{db}-wal")) if path.exists()]


def secrets_of(db: Path, image_id: str) -> list[bytes]:
    """Sampled chunks of the stored image, each face's embedding, the file name."""
    with sqlite3.connect(db) as conn:
        content = conn.execute("SELECT content FROM image_content WHERE image_id = ?", (image_id,)).fetchone()[0]
        filename = conn.execute("SELECT filename FROM images WHERE image_id = ?", (image_id,)).fetchone()[0]
        embeddings = [row[0] for row in conn.execute("SELECT embedding FROM faces WHERE image_id = ?", (image_id,))]
    step = max(1, (len(content) - CHUNK) // SAMPLES)
    chunks = [bytes(content[i:i + CHUNK]) for i in range(0, len(content) - CHUNK, step)][:SAMPLES]
    return chunks + [bytes(e[16:16 + CHUNK]) for e in embeddings] + [filename.encode()]


def readable(db: Path, secrets: list[bytes]) -> list[bytes]:
    data = [path.read_bytes() for path in store_files(db)]
    return [secret for secret in secrets if any(secret in blob for blob in data)]


def wait_unreadable(db: Path, secrets: list[bytes]) -> None:
    deadline = time.monotonic() + HANG_GUARD_SECONDS
    while (left := readable(db, secrets)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"{len(left)} of {len(secrets)} erased chunks still readable in {store_files(db)}"


def upload(gateway, photo: Path, filename: str) -> dict:
    payload = {"content": base64.b64encode(photo.read_bytes()).decode(), "filename": filename}
    status, result = gateway.json("POST", "/v1/images:ingest", payload)
    assert status == 200, result
    return result


def test_deleted_image_is_unreadable_in_the_store_files(gateway, mesh, faces_dir):
    db = mesh.config.sqlite_path
    name = f"erase-me-{uuid.uuid4().hex[:12]}.jpg"
    image_id = upload(gateway, faces_dir / "scenes/two_people.jpg", name)["image"]["imageId"]
    secrets = secrets_of(db, image_id)
    assert len(readable(db, secrets)) == len(secrets)  # the check can see them while they are there
    status, erased = gateway.json("DELETE", f"/v1/images/{image_id}")
    assert status == 200 and erased["imageIds"] == [image_id]
    wait_unreadable(db, secrets)


def test_persona_erased_with_its_faces_is_unreadable_in_the_store_files(gateway, mesh, faces_dir):
    db = mesh.config.sqlite_path
    photo = upload(gateway, faces_dir / "bbt/raj/raj2.png", f"erase-me-{uuid.uuid4().hex[:12]}.png")
    image_id, face_id = photo["image"]["imageId"], photo["faces"][0]["faceId"]
    persona_name = f"Quilliam Erasable {uuid.uuid4().hex[:8]}"
    with grpc.insecure_channel(f"127.0.0.1:{mesh.ports['query']}") as channel:
        stub = query_pb2_grpc.QueryServiceStub(channel)
        persona = stub.CreatePersona(query_pb2.CreatePersonaRequest(persona={"display_name": persona_name}),
                                     timeout=HANG_GUARD_SECONDS)
        stub.LabelFace(query_pb2.LabelFaceRequest(face_id=face_id, persona_id=persona.persona_id, verdict=1),
                       timeout=HANG_GUARD_SECONDS)
        secrets = secrets_of(db, image_id) + [persona_name.encode()]
        assert len(readable(db, secrets)) == len(secrets)
        stub.DeletePersona(query_pb2.DeletePersonaRequest(persona_id=persona.persona_id, erase_faces=True),
                           timeout=HANG_GUARD_SECONDS)
    wait_unreadable(db, secrets)
