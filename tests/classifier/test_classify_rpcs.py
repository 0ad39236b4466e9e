"""Classify, ClassifyEmbeddings and ClassifyStream over a real channel."""
from __future__ import annotations

import io
import threading
import time

import grpc
import pytest
from PIL import Image

from tests.classifier.conftest import SCENE_PEOPLE, activate_model, personas_for
from visage.v1 import classify_pb2


def blank_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (200, 150), (120, 180, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def names_left_to_right(response) -> list[str]:
    return [face.display_name for face in sorted(response.faces, key=lambda face: face.box.left)]


@pytest.fixture
def bbt_model(sqlite_store, crop_embeddings):
    ids = personas_for(sqlite_store, crop_embeddings)
    version = activate_model(sqlite_store, {ids[name]: rows for name, rows in crop_embeddings.items()})
    return ids, version


def wait_for_version(stub, version: int, timeout: float = 10.0) -> None:
    """The classifier swaps models when it sees the activation event (polled)."""
    probe = classify_pb2.ClassifyEmbeddingsRequest(embeddings=[classify_pb2.Embedding(values=[0.0] * 128)])
    deadline = time.monotonic() + timeout
    while stub.ClassifyEmbeddings(probe).model_version != version:
        assert time.monotonic() < deadline, f"version {version} never served"
        time.sleep(0.05)


def test_classify_without_model_finds_faces_all_unknown(stub, faces_dir):
    response = stub.Classify(classify_pb2.ClassifyRequest(content=(faces_dir / "scenes/bbt1.jpg").read_bytes()))
    assert response.model_version == 0
    assert len(response.faces) == 4
    assert all(face.persona_id == "" and face.display_name == "" for face in response.faces)
    assert all(face.box.right > face.box.left and len(face.landmarks) == 5 for face in response.faces)


def test_image_without_face_is_an_empty_answer(stub):
    response = stub.Classify(classify_pb2.ClassifyRequest(content=blank_png()))
    assert list(response.faces) == []


@pytest.mark.parametrize("scene", sorted(SCENE_PEOPLE))
def test_group_photo_names_the_right_people(stub, bbt_model, faces_dir, scene):
    ids, version = bbt_model
    wait_for_version(stub, version)
    response = stub.Classify(classify_pb2.ClassifyRequest(content=(faces_dir / "scenes" / scene).read_bytes()))
    assert response.model_version == version
    assert names_left_to_right(response) == SCENE_PEOPLE[scene]
    for face in response.faces:
        assert face.persona_id == ids[face.display_name]
        assert 0.0 < face.confidence <= 1.0


def test_strangers_are_unknown(stub, bbt_model, faces_dir):
    wait_for_version(stub, bbt_model[1])
    for photo in sorted((faces_dir / "noise").iterdir()):
        response = stub.Classify(classify_pb2.ClassifyRequest(content=photo.read_bytes()))
        assert [face.persona_id for face in response.faces] == [""] * len(response.faces), photo.name


@pytest.mark.parametrize("content, code, words", [
    (b"", grpc.StatusCode.INVALID_ARGUMENT, "empty"),
    (b"this is not an image at all", grpc.StatusCode.INVALID_ARGUMENT, "not an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, grpc.StatusCode.INVALID_ARGUMENT, ""),
    (b"\xff" * (21 * 1024 * 1024), grpc.StatusCode.RESOURCE_EXHAUSTED, "limit"),
])
def test_bad_images_get_a_clear_status_and_the_service_stays_up(stub, faces_dir, content, code, words):
    with pytest.raises(grpc.RpcError) as caught:
        stub.Classify(classify_pb2.ClassifyRequest(content=content))
    assert caught.value.code() == code
    assert words in caught.value.details()
    assert caught.value.details()
    after = stub.Classify(classify_pb2.ClassifyRequest(content=(faces_dir / "scenes/bbt2.jpg").read_bytes()))
    assert len(after.faces) == 2


def test_expired_deadline_is_reported(stub, faces_dir):
    with pytest.raises(grpc.RpcError) as caught:
        stub.Classify(classify_pb2.ClassifyRequest(content=(faces_dir / "scenes/bbt1.jpg").read_bytes()),
                      timeout=0.001)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_classify_embeddings_names_each_row_in_order(stub, bbt_model, crop_embeddings):
    ids, version = bbt_model
    wait_for_version(stub, version)
    order = ["penny", "raj", "amy"]
    request = classify_pb2.ClassifyEmbeddingsRequest(
        embeddings=[classify_pb2.Embedding(values=crop_embeddings[name][0].tolist()) for name in order]
        + [classify_pb2.Embedding(values=[5.0] * 128)])
    response = stub.ClassifyEmbeddings(request)
    assert response.model_version == version
    assert [p.persona_id for p in response.predictions] == [ids[name] for name in order] + [""]
    assert all(p.model_version == version and p.face_id == "" for p in response.predictions)


@pytest.mark.parametrize("embeddings, words", [
    ([], "required"),
    ([[0.1] * 127], "embeddings[0] has 127 values; expected 128"),
    ([[0.1] * 128, [0.1] * 129], "embeddings[1] has 129 values"),
    ([[float("nan")] * 128], "NaN"),
])
def test_classify_embeddings_refuses_malformed_rows(stub, embeddings, words):
    request = classify_pb2.ClassifyEmbeddingsRequest(
        embeddings=[classify_pb2.Embedding(values=values) for values in embeddings])
    with pytest.raises(grpc.RpcError) as caught:
        stub.ClassifyEmbeddings(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in caught.value.details()


def test_stream_answers_every_item_and_a_bad_item_fails_only_itself(stub, bbt_model, faces_dir, crop_embeddings):
    ids, version = bbt_model
    wait_for_version(stub, version)
    items = [
        classify_pb2.ClassifyStreamRequest(request_id="scene", content=(faces_dir / "scenes/bbt2.jpg").read_bytes()),
        classify_pb2.ClassifyStreamRequest(request_id="garbage", content=b"not an image"),
        classify_pb2.ClassifyStreamRequest(request_id="short", embedding=classify_pb2.Embedding(values=[1.0])),
        classify_pb2.ClassifyStreamRequest(request_id="empty"),
        classify_pb2.ClassifyStreamRequest(
            request_id="penny", embedding=classify_pb2.Embedding(values=crop_embeddings["penny"][1].tolist())),
    ]
    answers = {answer.request_id: answer for answer in stub.ClassifyStream(iter(items))}
    assert set(answers) == {item.request_id for item in items}
    assert names_left_to_right(answers["scene"]) == SCENE_PEOPLE["bbt2.jpg"]
    assert answers["scene"].error_code == "" and answers["scene"].model_version == version
    assert answers["garbage"].error_code == "INVALID_ARGUMENT" and "not an image" in answers["garbage"].error_message
    assert answers["short"].error_code == "INVALID_ARGUMENT" and "128" in answers["short"].error_message
    assert answers["empty"].error_code == "INVALID_ARGUMENT"
    assert [(f.persona_id, f.display_name) for f in answers["penny"].faces] == [(ids["penny"], "penny")]


def stream_readers() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == "classify-stream-reader"]


def test_cancelled_stream_stops_its_work(stub, faces_dir):
    content = (faces_dir / "scenes/bbt1.jpg").read_bytes()
    release = threading.Event()

    def requests():
        yield classify_pb2.ClassifyStreamRequest(request_id="first", content=content)
        release.wait(30)  # the caller keeps the stream open, sending nothing more

    call = stub.ClassifyStream(requests())
    first = next(call)
    assert first.request_id == "first" and len(first.faces) == 4
    assert len(stream_readers()) == 1
    call.cancel()
    deadline = time.monotonic() + 10
    while stream_readers():
        assert time.monotonic() < deadline, "the server kept reading a cancelled stream"
        time.sleep(0.05)
    release.set()
    assert len(stub.Classify(classify_pb2.ClassifyRequest(content=content)).faces) == 4
