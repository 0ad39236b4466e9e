"""Classifier fixtures: one real face-pipeline pool for the session, the real
embeddings of the shared bbt crops, and models trained from them with the
trainer's own estimator and ONNX export (no stand-in model)."""
from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest

from visage.config import Config
from visage.faces.pool import PipelinePool
from visage.model import OpenSetCentroidClassifier, distance_to_confidence, export_onnx
from visage.store.base import Store
from visage.store.records import FaceRecord, ImageRecord, ModelVersionRecord
from visage.v1 import classify_pb2_grpc
from visage.v1 import resources_pb2 as pb
from visage_classifier.server import start

# Who is where in the shared group photos, left to right (checked against the
# crops' embeddings: every scene face is >= 0.13 nearer its own centroid).
SCENE_PEOPLE = {
    "bbt1.jpg": ["raj", "leonard", "howard", "sheldon"],
    "bbt2.jpg": ["leonard", "sheldon"],
    "bbt3.jpg": ["sheldon", "howard", "penny", "raj", "leonard"],
}
DISTANCE_THRESHOLD = 0.55  # dlib: the same person is usually nearer than 0.6


@pytest.fixture(scope="session")
def pool() -> PipelinePool:
    pipeline_pool = PipelinePool(Config(workers=1))
    yield pipeline_pool
    pipeline_pool.close()


@pytest.fixture(scope="session")
def crop_embeddings(pool: PipelinePool, faces_dir: Path) -> dict[str, list[np.ndarray]]:
    """name -> embeddings of that person's bbt crops (one face per crop)."""
    embeddings: dict[str, list[np.ndarray]] = {}
    for person in sorted((faces_dir / "bbt").iterdir()):
        for crop in sorted(person.iterdir()):
            faces = pool.analyze(crop.read_bytes()).faces
            assert len(faces) == 1, crop
            embeddings.setdefault(person.name, []).append(faces[0].embedding)
    return embeddings


def activate_model(store: Store, persona_embeddings: dict[str, list[np.ndarray]],
                   distance_threshold: float = DISTANCE_THRESHOLD) -> int:
    """Trains, exports and activates a version on these personas' faces; returns its number."""
    persona_ids = [persona_id for persona_id, rows in persona_embeddings.items() for _ in rows]
    matrix = np.stack([row for rows in persona_embeddings.values() for row in rows])
    estimator = OpenSetCentroidClassifier(distance_threshold).fit(matrix, persona_ids)
    record = ModelVersionRecord(
        version=0, state=pb.MODEL_STATE_CANDIDATE, algorithm="test", persona_ids=estimator.classes_,
        unknown_threshold=float(distance_to_confidence(distance_threshold)), metrics={}, lineage={})
    version = store.put_model_version(record, export_onnx(estimator)).version
    store.activate_model_version(version)
    return version


def personas_for(store: Store, crop_embeddings: dict[str, list[np.ndarray]]) -> dict[str, str]:
    """Creates one persona per bbt person; returns name -> persona id."""
    return {name: store.create_persona(name).persona_id for name in crop_embeddings}


def put_faces(store: Store, embeddings: np.ndarray, faces_per_image: int = 5000) -> list[str]:
    """Stores synthetic images holding these embeddings as faces; returns the face ids."""
    face_ids = []
    for start_row in range(0, len(embeddings), faces_per_image):
        image_id = uuid.uuid4().hex
        rows = embeddings[start_row:start_row + faces_per_image]
        faces = [FaceRecord(f"{image_id}-{i}", image_id, i, (0, 0, 10, 10), [], row) for i, row in enumerate(rows)]
        store.put_image(ImageRecord(image_id, "synthetic", "image/jpeg", 10, 10, 1, len(faces),
                                    pb.IMAGE_STATUS_FACES_FOUND), b"x", faces)
        face_ids += [face.face_id for face in faces]
    return face_ids


@pytest.fixture
def classifier(config: Config, sqlite_store: Store, pool: PipelinePool):
    running = start(config, sqlite_store, "127.0.0.1:0", pool=pool)
    yield running
    running.stop(grace=0)


@pytest.fixture
def stub(classifier):
    with grpc.insecure_channel(f"127.0.0.1:{classifier.port}") as channel:
        yield classify_pb2_grpc.ClassifyServiceStub(channel)
