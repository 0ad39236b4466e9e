"""Query-service fixtures: a real server on a free port over a private SQLite
store, and helpers that write images, faces, model versions and predictions
straight into the store (the query service only reads them)."""
from __future__ import annotations

import hashlib
import io
import itertools
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from visage.store.base import Store
from visage.store.records import FaceRecord, ImageRecord, ModelVersionRecord, PredictionRecord
from visage.v1 import query_pb2_grpc
from visage.v1 import resources_pb2 as pb
from visage_query.server import start

_unique = itertools.count()


@pytest.fixture(params=["sqlite", pytest.param("cassandra", marks=pytest.mark.cassandra)])
def store(request) -> Store:
    """Each query test runs on both backends (Cassandra only where one is running)."""
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture
def query_service(config, store):
    service = start(config, store, "127.0.0.1:0")
    yield service
    service.stop(grace=0)


@pytest.fixture
def channel(query_service):
    with grpc.insecure_channel(f"127.0.0.1:{query_service.port}") as channel:
        yield channel


@pytest.fixture
def stub(channel) -> query_pb2_grpc.QueryServiceStub:
    return query_pb2_grpc.QueryServiceStub(channel)


@pytest.fixture(scope="session")
def crop_jpegs(faces_dir: Path) -> list[bytes]:
    """Real face crops (the shared bbt photos) re-encoded as JPEG, like stored chips."""
    crops = []
    for path in sorted((faces_dir / "bbt").glob("*/*1.png")):
        buffer = io.BytesIO()
        Image.open(path).convert("RGB").save(buffer, format="JPEG")
        crops.append(buffer.getvalue())
    return crops


@pytest.fixture
def add_image(faces_dir: Path, crop_jpegs: list[bytes]):
    """add_image(store, n_faces) → the stored faces: a real scene photo (made
    unique per call) with n faces of random embeddings and real crops."""
    scene = (faces_dir / "scenes" / "bbt1.jpg").read_bytes()

    def add(store: Store, n_faces: int, create_time: float | None = None) -> list[FaceRecord]:
        number = next(_unique)
        content = scene + f"#{number}".encode()  # trailing bytes after JPEG EOI: still a valid JPEG
        image_id = hashlib.sha256(content).hexdigest()
        when = create_time if create_time is not None else 1_700_000_000.0 + number
        rng = np.random.default_rng(number)
        faces = [FaceRecord(face_id=f"{image_id[:24]}-{index}", image_id=image_id, index=index,
                            box=(10 * index, 20, 10 * index + 50, 70),
                            landmarks=[(1.0 + index, 2.0), (3.0, 4.0), (5.0, 6.0), (7.0, 8.0), (9.0, 10.0)],
                            embedding=rng.standard_normal(128).astype(np.float32),
                            crop_jpeg=crop_jpegs[(number + index) % len(crop_jpegs)], create_time=when)
                 for index in range(n_faces)]
        image = ImageRecord(image_id=image_id, filename=f"scene{number}.jpg", content_type="image/jpeg",
                            width=800, height=600, size_bytes=len(content), face_count=n_faces,
                            status=pb.IMAGE_STATUS_FACES_FOUND if n_faces else pb.IMAGE_STATUS_NO_FACE,
                            create_time=when)
        assert store.put_image(image, content, faces)
        return faces

    return add


@pytest.fixture
def activate_model():
    return _activate_model


@pytest.fixture
def predict():
    return _predict


def _activate_model(store: Store, persona_ids: list[str]) -> int:
    """Stores and activates a model version (a placeholder artifact: the query
    service never runs it); returns its number."""
    record = ModelVersionRecord(version=0, state=pb.MODEL_STATE_CANDIDATE, algorithm="test", unknown_threshold=0.5,
                                persona_ids=persona_ids, metrics={}, lineage={})
    version = store.put_model_version(record, b"not-an-onnx-model").version
    store.activate_model_version(version)
    return version


def _predict(store: Store, version: int, *face_persona_confidence: tuple[str, str, float]) -> None:
    store.put_predictions([PredictionRecord(face_id, persona_id, confidence, version)
                           for face_id, persona_id, confidence in face_persona_confidence])
