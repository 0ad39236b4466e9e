"""The servicer on pytest-grpc's server (its grpc_add_to_server / grpc_servicer /
grpc_stub_cls fixtures): one module-wide service, so each test makes its own data."""
from __future__ import annotations

import grpc
import pytest

from visage.server import service_interceptors
from visage.store.sqlite import SqliteStore
from visage.v1 import query_pb2, query_pb2_grpc
from visage.v1 import resources_pb2 as pb
from visage_query.server import QueryServicer

from query_calls import create, label, rpc_error

grpc_max_workers = 4  # pytest-grpc's pool size for this module (WatchEvents holds a worker)


@pytest.fixture(scope="module")
def module_store(tmp_path_factory):
    store = SqliteStore(tmp_path_factory.mktemp("query-servicer") / "visage.db")
    store.migrate()
    yield store
    store.close()


@pytest.fixture(scope="module")
def grpc_interceptors():
    """The chain every service runs (build_server's): tokens, error statuses, guards."""
    return service_interceptors()


@pytest.fixture(scope="module")
def grpc_add_to_server():
    return query_pb2_grpc.add_QueryServiceServicer_to_server


@pytest.fixture(scope="module")
def grpc_servicer(module_store):
    servicer = QueryServicer(module_store)
    yield servicer
    servicer.close()


@pytest.fixture(scope="module")
def grpc_stub_cls():
    return query_pb2_grpc.QueryServiceStub


def test_create_then_get(grpc_stub):
    created = create(grpc_stub, "Bernadette")
    got = grpc_stub.GetPersona(query_pb2.GetPersonaRequest(persona_id=created.persona_id))
    assert got == created


def test_label_and_list(grpc_stub, module_store, add_image):
    persona = create(grpc_stub, "Howard")
    face = add_image(module_store, 1)[0]
    label(grpc_stub, face.face_id, persona.persona_id)
    faces = grpc_stub.ListPersonaFaces(query_pb2.ListPersonaFacesRequest(persona_id=persona.persona_id)).faces
    assert [f.face_id for f in faces] == [face.face_id]
    assert grpc_stub.GetPersona(query_pb2.GetPersonaRequest(persona_id=persona.persona_id)).cover_face_id == face.face_id


def test_unspecified_verdict_is_refused_and_the_service_stays_up(grpc_stub, module_store, add_image):
    persona = create(grpc_stub, "Stuart")
    face = add_image(module_store, 1)[0]
    error = rpc_error(grpc_stub.LabelFace, query_pb2.LabelFaceRequest(
        face_id=face.face_id, persona_id=persona.persona_id, verdict=pb.VERDICT_UNSPECIFIED))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "VERDICT_UNSPECIFIED" in error.details()
    assert grpc_stub.GetFace(query_pb2.GetFaceRequest(face_id=face.face_id)).labels == []


def test_watch_sees_a_label(grpc_stub, module_store, add_image):
    persona = create(grpc_stub, "Leonard")
    face = add_image(module_store, 1)[0]
    call = grpc_stub.WatchEvents(query_pb2.WatchEventsRequest(types=[pb.EVENT_TYPE_FACE_LABELLED]), timeout=10)
    call.initial_metadata()
    label(grpc_stub, face.face_id, persona.persona_id)
    event = next(call)
    assert event.subject == face.face_id and event.attributes["persona_id"] == persona.persona_id
    assert event.attributes["verdict"] == "VERDICT_BELONGS"
    call.cancel()
