"""IngestService RPC behaviour, served by pytest-grpc's server fixtures."""
from __future__ import annotations

import hashlib

import grpc
import pytest

from tests.ingest.conftest import OVER_DEFAULT_LIMIT, bomb_png, png_without_face, truncated
from visage.store.sqlite import SqliteStore
from visage.v1 import ingest_pb2, ingest_pb2_grpc
from visage.v1 import resources_pb2 as pb
from visage_ingest.server import IngestServicer, add_to_server

grpc_max_workers = 8  # pytest-grpc's pool size for this module (tests/conftest.py builds the server)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = SqliteStore(tmp_path_factory.mktemp("ingest") / "visage.db")
    store.migrate()
    yield store
    store.close()


@pytest.fixture(scope="module")
def grpc_add_to_server():
    return add_to_server


@pytest.fixture(scope="module")
def grpc_servicer(store, pool):
    servicer = IngestServicer(store, pool)
    yield servicer
    servicer.close()


@pytest.fixture(scope="module")
def grpc_stub_cls():
    return ingest_pb2_grpc.IngestServiceStub


def ingest(stub, content: bytes, filename: str = "") -> ingest_pb2.IngestImageResponse:
    return stub.IngestImage(ingest_pb2.IngestImageRequest(content=content, filename=filename))


def events_of_type(store, event_type: int) -> int:
    return sum(event.type == event_type for event in store.read_events(""))


def test_single_face_image_is_stored_with_its_face(grpc_stub, store, faces_dir):
    content = (faces_dir / "bbt" / "penny" / "penny1.png").read_bytes()
    response = ingest(grpc_stub, content, "penny1.png")

    image_id = hashlib.sha256(content).hexdigest()
    assert not response.duplicate
    assert (response.image.image_id, response.image.filename, response.image.content_type) == \
        (image_id, "penny1.png", "image/png")
    assert (response.image.width, response.image.height, response.image.size_bytes) == (150, 150, len(content))
    assert response.image.status == pb.IMAGE_STATUS_FACES_FOUND and response.image.face_count == 1
    [face] = response.faces
    assert face.face_id == f"{image_id}-0" and face.image_id == image_id
    assert face.box.right > face.box.left and len(face.landmarks) == 5
    stored = store.get_face(face.face_id)
    assert stored.embedding.shape == (128,) and stored.crop_jpeg[:2] == b"\xff\xd8"
    assert store.get_image_content(image_id) == content


def test_same_bytes_twice_is_a_duplicate_and_stores_nothing(grpc_stub, store, faces_dir):
    content = (faces_dir / "bbt" / "raj" / "raj2.png").read_bytes()
    first = ingest(grpc_stub, content, "raj2.png")
    images, faces = store.count_images(), store.count_faces()
    ingested_events = events_of_type(store, pb.EVENT_TYPE_IMAGE_INGESTED)

    again = ingest(grpc_stub, content, "another-name.png")

    assert again.duplicate and not first.duplicate
    assert again.image.image_id == first.image.image_id and again.image.filename == "raj2.png"
    assert [face.face_id for face in again.faces] == [face.face_id for face in first.faces]
    assert (store.count_images(), store.count_faces()) == (images, faces)
    assert events_of_type(store, pb.EVENT_TYPE_IMAGE_INGESTED) == ingested_events


def test_image_without_face_is_stored_as_no_face(grpc_stub, store):
    response = ingest(grpc_stub, png_without_face(), "sky.png")
    assert response.image.status == pb.IMAGE_STATUS_NO_FACE
    assert response.image.face_count == 0 and list(response.faces) == []
    assert store.get_image(response.image.image_id).status == pb.IMAGE_STATUS_NO_FACE


@pytest.mark.parametrize("make_content, code, message", [
    (lambda faces: b"", grpc.StatusCode.INVALID_ARGUMENT, "image is empty"),
    (lambda faces: truncated(faces / "scenes" / "bbt2.jpg"), grpc.StatusCode.INVALID_ARGUMENT, "truncated"),
    (lambda faces: b"<html>not an image</html>", grpc.StatusCode.INVALID_ARGUMENT, "not an image"),
    (lambda faces: bomb_png(), grpc.StatusCode.INVALID_ARGUMENT, "decompression bomb"),
    (lambda faces: OVER_DEFAULT_LIMIT, grpc.StatusCode.RESOURCE_EXHAUSTED, "the limit is 20,971,520 bytes"),
])
def test_bad_input_gets_a_clear_status_and_stores_nothing(grpc_stub, store, faces_dir, make_content, code,
                                                          message):
    images = store.count_images()
    with pytest.raises(grpc.RpcError) as error:
        ingest(grpc_stub, make_content(faces_dir), "bad.jpg")
    assert error.value.code() == code
    assert message in error.value.details() and error.value.details().startswith("bad.jpg: ")
    assert store.count_images() == images
    # ... and the service keeps serving.
    assert ingest(grpc_stub, (faces_dir / "noise" / "sad.jpg").read_bytes()).image.face_count == 1


def test_hostile_filename_is_stored_cleaned_and_capped(grpc_stub, store):
    response = ingest(grpc_stub, png_without_face(colour=(1, 2, 3)), "../../etc/passwd\x00\x1b[31m" + "x" * 5000)
    stored = store.get_image(response.image.image_id).filename
    assert stored.startswith("passwd[31mxxx") and len(stored) == 255  # no directory part
    assert "\x00" not in stored and "\x1b" not in stored


def test_bulk_stream_events_name_the_caller(ingest_server, faces_dir, issue_token):
    """Each streamed image is ingested on a worker thread: the caller's identity must go with it."""
    stub, store, _port = ingest_server
    as_olga = [("authorization", f"Bearer {issue_token('operator', 'olga')}")]
    content = (faces_dir / "bbt" / "penny" / "penny1.png").read_bytes()
    stub.IngestImages(iter([ingest_pb2.IngestImagesRequest(content=content, filename="penny1.png")]), metadata=as_olga)
    ingested = [e for e in store.read_events("", 1000) if e.type == pb.EVENT_TYPE_IMAGE_INGESTED]
    assert [e.attributes.get("actor") for e in ingested] == ["olga"]


def test_bulk_stream_answers_per_image_in_order_with_a_summary(grpc_stub, faces_dir):
    already = (faces_dir / "bbt" / "penny" / "penny1.png").read_bytes()
    ingest(grpc_stub, already)
    requests = [
        ingest_pb2.IngestImagesRequest(content=(faces_dir / "scenes" / "bbt1.jpg").read_bytes(), filename="bbt1"),
        ingest_pb2.IngestImagesRequest(content=b"garbage", filename="garbage"),
        ingest_pb2.IngestImagesRequest(content=png_without_face(colour=(7, 7, 7)), filename="blank"),
        ingest_pb2.IngestImagesRequest(content=already, filename="penny-again"),
        ingest_pb2.IngestImagesRequest(content=OVER_DEFAULT_LIMIT, filename="huge"),
        ingest_pb2.IngestImagesRequest(content=(faces_dir / "scenes" / "bbt2.jpg").read_bytes(), filename="bbt2"),
    ]
    summary = grpc_stub.IngestImages(iter(requests))

    outcomes = [(r.filename, ingest_pb2.IngestOutcome.Name(r.outcome), r.face_count, r.error_code)
                for r in summary.results]
    assert outcomes == [
        ("bbt1", "INGEST_OUTCOME_INGESTED", 4, ""),
        ("garbage", "INGEST_OUTCOME_FAILED", 0, "INVALID_ARGUMENT"),
        ("blank", "INGEST_OUTCOME_NO_FACE", 0, ""),
        ("penny-again", "INGEST_OUTCOME_DUPLICATE", 1, ""),
        ("huge", "INGEST_OUTCOME_FAILED", 0, "RESOURCE_EXHAUSTED"),
        ("bbt2", "INGEST_OUTCOME_INGESTED", 2, ""),
    ]
    assert "not an image" in summary.results[1].error_message
    assert (summary.images, summary.faces, summary.images_without_face, summary.duplicates, summary.failures) == \
        (6, 6, 1, 1, 2)
