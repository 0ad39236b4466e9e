"""Small QueryService call helpers shared by the query tests."""
from __future__ import annotations

import grpc
import pytest

from visage.v1 import query_pb2
from visage.v1 import resources_pb2 as pb


def create(stub, name: str) -> pb.Persona:
    return stub.CreatePersona(query_pb2.CreatePersonaRequest(persona=pb.Persona(display_name=name)))


def label(stub, face_id: str, persona_id: str, verdict=pb.VERDICT_BELONGS) -> pb.Face:
    return stub.LabelFace(query_pb2.LabelFaceRequest(face_id=face_id, persona_id=persona_id, verdict=verdict))


def rpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call(request)
    return caught.value


def assert_still_serving(stub):
    stub.ListPersonas(query_pb2.ListPersonasRequest())
