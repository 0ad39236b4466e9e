"""Every list pages without duplicates or gaps, and rejects foreign or broken tokens."""
from __future__ import annotations

import base64
import time

import grpc
import pytest

from visage import paging
from visage.v1 import query_pb2, query_pb2_grpc
from visage.v1 import resources_pb2 as pb
from visage_query.server import start

from query_calls import assert_still_serving, create, label, rpc_error


def collect(call, make_request, items_field: str, page_size: int, id_field: str) -> list[str]:
    """Walks every page; fails on a page over page_size or a loop."""
    ids, token = [], ""
    for _ in range(1000):
        response = call(make_request(page_size=page_size, page_token=token))
        page = getattr(response, items_field)
        assert len(page) <= page_size
        ids.extend(getattr(item, id_field) for item in page)
        token = response.next_page_token
        if not token:
            return ids
    raise AssertionError("pagination never ended")


def test_personas_pages(stub):
    names = [f"persona {n:02d}" for n in range(23)]
    for name in reversed(names):
        create(stub, name)
    ids = collect(stub.ListPersonas, query_pb2.ListPersonasRequest, "personas", 5, "display_name")
    assert ids == names


def test_images_pages(stub, store, add_image):
    oldest_first = [add_image(store, 1, create_time=float(n))[0].image_id for n in range(17)]
    ids = collect(stub.ListImages, query_pb2.ListImagesRequest, "images", 4, "image_id")
    assert ids == list(reversed(oldest_first))


def test_persona_faces_pages_of_each_kind(stub, store, add_image, activate_model, predict):
    penny = create(stub, "Penny")
    faces = add_image(store, 30)
    for face in faces[:11]:
        label(stub, face.face_id, penny.persona_id)
    for face in faces[11:18]:
        label(stub, face.face_id, penny.persona_id, pb.VERDICT_NOT_BELONGS)
    version = activate_model(store, [penny.persona_id])
    predict(store, version, *[(face.face_id, penny.persona_id, 0.5 + index / 100)
                                     for index, face in enumerate(faces)])
    expected = {
        query_pb2.FACE_KIND_LABELLED: [face.face_id for face in reversed(faces[:11])],
        query_pb2.FACE_KIND_REJECTED: [face.face_id for face in reversed(faces[11:18])],
        query_pb2.FACE_KIND_PREDICTED: [face.face_id for face in reversed(faces[18:])],
    }
    for kind, want in expected.items():
        def request(kind=kind, **page):
            return query_pb2.ListPersonaFacesRequest(persona_id=penny.persona_id, kind=kind, **page)
        assert collect(stub.ListPersonaFaces, request, "faces", 3, "face_id") == want


def test_unknown_faces_pages(stub, store, add_image):
    faces = [face for n in range(9) for face in add_image(store, n % 4, create_time=float(n))]
    penny = create(stub, "Penny")
    label(stub, faces[0].face_id, penny.persona_id)
    ids = collect(stub.ListUnknownFaces, query_pb2.ListUnknownFacesRequest, "faces", 2, "face_id")
    assert len(ids) == len(set(ids)) == len(faces) - 1
    assert faces[0].face_id not in ids


def test_unknown_face_pages_skip_hidden_faces_and_stay_exact_between_writes(stub, store, add_image):
    """Tokens are cursors: faces labelled, hidden or ingested between pages shift nothing."""
    faces = [face for n in range(6) for face in add_image(store, 2, create_time=float(n))]
    newest_first = [face.face_id for n in reversed(range(6)) for face in faces[2 * n:2 * n + 2]]
    penny = create(stub, "Penny")
    stub.SetFaceHidden(query_pb2.SetFaceHiddenRequest(face_id=newest_first[1], hidden=True))
    first = stub.ListUnknownFaces(query_pb2.ListUnknownFacesRequest(page_size=3))
    assert [face.face_id for face in first.faces] == [newest_first[0], newest_first[2], newest_first[3]]
    label(stub, newest_first[0], penny.persona_id)  # before the cursor: no shift
    label(stub, newest_first[4], penny.persona_id)  # after it: no longer unknown
    stub.SetFaceHidden(query_pb2.SetFaceHiddenRequest(face_id=newest_first[5], hidden=True))
    add_image(store, 1, create_time=100.0)  # newer than the cursor: on a first page only
    rest = stub.ListUnknownFaces(query_pb2.ListUnknownFacesRequest(page_size=3, page_token=first.next_page_token))
    assert [face.face_id for face in rest.faces] == newest_first[6:9] and rest.next_page_token
    last = stub.ListUnknownFaces(query_pb2.ListUnknownFacesRequest(page_size=3, page_token=rest.next_page_token))
    assert [face.face_id for face in last.faces] == newest_first[9:] and not last.next_page_token


@pytest.mark.parametrize("key", [[1.0, "image", 0], [1.0, "image", -1, "face"], ["1", "image", 0, "face"],
                                 [1e300, "image", 0, "face"], [1.0, 7, 0, "face"], "not a list"])
def test_invalid_unknown_face_tokens(stub, key):
    token = paging.encode_key_token("unknown-faces", key)
    error = rpc_error(stub.ListUnknownFaces, query_pb2.ListUnknownFacesRequest(page_token=token))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in error.details()
    foreign = paging.encode_key_token("images", [1.0, "image", 0, "face"])
    assert rpc_error(stub.ListUnknownFaces, query_pb2.ListUnknownFacesRequest(
        page_token=foreign)).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert_still_serving(stub)


def test_page_size_default_and_cap(stub):
    for n in range(3):
        create(stub, f"p{n}")
    assert len(stub.ListPersonas(query_pb2.ListPersonasRequest(page_size=0)).personas) == 3
    assert len(stub.ListPersonas(query_pb2.ListPersonasRequest(page_size=10_000)).personas) == 3


@pytest.mark.parametrize("token", [
    "not base64 !!",
    "AAAA",
    base64.urlsafe_b64encode(b'{"s": "personas", "p": [-4]}').decode(),
    base64.urlsafe_b64encode(b'{"s": "personas", "p": ["x"]}').decode(),
    base64.urlsafe_b64encode(b'{"s": "images", "p": [5]}').decode(),  # another list's token
    "A" * 5000,
])
def test_invalid_page_tokens(stub, token):
    error = rpc_error(stub.ListPersonas, query_pb2.ListPersonasRequest(page_token=token))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in error.details()
    assert_still_serving(stub)


def test_a_token_is_bound_to_its_persona_and_kind(stub, store, add_image):
    penny, amy = create(stub, "Penny"), create(stub, "Amy")
    for face in add_image(store, 3):
        label(stub, face.face_id, penny.persona_id)
    token = stub.ListPersonaFaces(query_pb2.ListPersonaFacesRequest(persona_id=penny.persona_id,
                                                                    page_size=1)).next_page_token
    assert token
    for request in (query_pb2.ListPersonaFacesRequest(persona_id=amy.persona_id, page_token=token),
                    query_pb2.ListPersonaFacesRequest(persona_id=penny.persona_id, page_token=token,
                                                      kind=query_pb2.FACE_KIND_REJECTED)):
        assert rpc_error(stub.ListPersonaFaces, request).code() == grpc.StatusCode.INVALID_ARGUMENT


class SlowImageListing:
    """The real store, but each image listing takes a while, as on a machine
    whose cores are busy with other work."""

    def __init__(self, store, seconds: float):
        self._store, self._seconds = store, seconds

    def list_images(self, offset: int, limit: int):
        time.sleep(self._seconds)
        return self._store.list_images(offset, limit)

    def __getattr__(self, name):
        return getattr(self._store, name)


def test_unknown_face_pages_are_exact_when_unknown_faces_are_rare_and_the_store_is_slow(
        config, store, add_image, activate_model, predict):
    """Pages used to come back short (even empty, with a token) once the scan had
    spent 0.3 s or 10,000 faces; now a page is full unless it is the last."""
    faces = [face for n in range(250) for face in add_image(store, 1, create_time=float(n))]
    penny_id = store.create_persona("Penny").persona_id
    version = activate_model(store, [penny_id])
    unknown = [faces[4], faces[2], faces[0]]  # the oldest images: the last of three image batches
    predict(store, version, *[(face.face_id, "" if face in unknown else penny_id, 0.9) for face in faces])
    service = start(config, SlowImageListing(store, seconds=0.35), "127.0.0.1:0")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = query_pb2_grpc.QueryServiceStub(channel)
            first = stub.ListUnknownFaces(query_pb2.ListUnknownFacesRequest(page_size=2), timeout=60)
            assert [face.face_id for face in first.faces] == [faces[4].face_id, faces[2].face_id]
            rest = stub.ListUnknownFaces(query_pb2.ListUnknownFacesRequest(
                page_size=2, page_token=first.next_page_token), timeout=60)
            assert [face.face_id for face in rest.faces] == [faces[0].face_id] and not rest.next_page_token
    finally:
        service.stop(grace=0)


def test_a_page_of_unknown_faces_is_full_when_enough_exist(stub, store, add_image, activate_model, predict):
    """Hundreds of faces, most unknown: one call returns a full page (on Cassandra too,
    where reading predictions face by face used to run out of the scan's time first)."""
    penny = create(stub, "Penny")
    faces = [face for n in range(200) for face in add_image(store, 3, create_time=float(n))]
    version = activate_model(store, [penny.persona_id])
    known = {face.face_id for face in faces[::10]}
    predict(store, version, *[(face.face_id, penny.persona_id if face.face_id in known else "", 0.9)
                              for face in faces])
    first = stub.ListUnknownFaces(query_pb2.ListUnknownFacesRequest(page_size=500))
    images = [faces[start:start + 3] for start in range(0, len(faces), 3)]
    # Images newest first, each image's faces in index order.
    want = [face.face_id for image in reversed(images) for face in image if face.face_id not in known]
    assert len(want) == 540
    assert [face.face_id for face in first.faces] == want[:500] and first.next_page_token
    assert all(face.HasField("prediction") and not face.prediction.persona_id for face in first.faces)
    rest = stub.ListUnknownFaces(query_pb2.ListUnknownFacesRequest(page_size=500, page_token=first.next_page_token))
    assert [face.face_id for face in rest.faces] == want[500:] and not rest.next_page_token
