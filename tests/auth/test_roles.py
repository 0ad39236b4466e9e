"""The role table against every RPC, directly over gRPC to the real services:
each role is let through exactly the RPCs its rank allows (PERMISSION_DENIED
for the others), a caller without a token gets UNAUTHENTICATED everywhere, and
reflection and health stay open."""
from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rpc_matrix import all_methods, call_status, expected, grpc_path, outcome

from visage.auth.roles import RPC_ROLES, Role


def test_every_rpc_in_the_protos_has_a_least_role_and_the_table_names_no_other():
    in_protos = {grpc_path(method) for _, method in all_methods()}
    assert in_protos - set(RPC_ROLES) == set(), "add these RPCs to visage.auth.roles.RPC_ROLES"
    assert set(RPC_ROLES) - in_protos == set(), "these RPCs in RPC_ROLES no longer exist"


def test_the_roles_are_ordered_and_each_rank_has_rpcs_of_its_own():
    assert list(Role) == sorted(Role) and [r.label for r in Role] == ["viewer", "labeller", "operator", "admin"]
    assert {RPC_ROLES["/visage.v1.QueryService/ListPersonas"], RPC_ROLES["/visage.v1.QueryService/LabelFace"],
            RPC_ROLES["/visage.v1.IngestService/IngestImage"]} == {Role.VIEWER, Role.LABELLER, Role.OPERATOR}


@pytest.mark.parametrize("role", [None, *Role], ids=lambda r: r.label if r else "anonymous")
def test_each_caller_is_let_through_exactly_the_rpcs_its_role_allows(role, services, plain_channel, issue_token):
    metadata = [("authorization", f"Bearer {issue_token(role, f'a-{role.label}')}")] if role else []
    wrong = {}
    for name, method in all_methods():
        with plain_channel(f"127.0.0.1:{services.ports[name]}") as channel:
            code = call_status(channel, method, metadata)
        if outcome(code) != expected(role, method):
            wrong[grpc_path(method)] = f"{code.name}, want {expected(role, method)}"
    assert wrong == {}


def test_reflection_and_health_answer_without_a_token(services, plain_channel):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    for port in services.ports.values():
        with plain_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            answers = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=30)
            assert next(answers).list_services_response.service


def test_a_refusal_says_which_role_is_needed(services, plain_channel, issue_token):
    from visage.v1 import ingest_pb2, ingest_pb2_grpc
    with plain_channel(f"127.0.0.1:{services.ports['ingest']}") as channel:
        with pytest.raises(grpc.RpcError) as refused:
            ingest_pb2_grpc.IngestServiceStub(channel).IngestImage(
                ingest_pb2.IngestImageRequest(content=b"x"), timeout=30,
                metadata=[("authorization", f"Bearer {issue_token('labeller', 'lena')}")])
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "operator" in refused.value.details() and "lena" in refused.value.details()


def test_options_that_need_more_than_their_rpcs_role_are_refused_below_it(services, plain_channel, issue_token):
    """Erasing a persona's faces with it is erasure (admin), though deleting a persona is a labeller's;
    a face's embedding is biometric data (operator), though reading a face is a viewer's."""
    from visage.v1 import query_pb2, query_pb2_grpc
    from visage.v1 import resources_pb2 as pb

    def as_(role):
        return [("authorization", f"Bearer {issue_token(role, f'opt-{role}')}")]

    with plain_channel(f"127.0.0.1:{services.ports['query']}") as channel:
        stub = query_pb2_grpc.QueryServiceStub(channel)
        persona = stub.CreatePersona(query_pb2.CreatePersonaRequest(persona=pb.Persona(display_name="Opt")),
                                     timeout=30, metadata=as_("labeller"))
        erase = query_pb2.DeletePersonaRequest(persona_id=persona.persona_id, erase_faces=True)
        with pytest.raises(grpc.RpcError) as refused:
            stub.DeletePersona(erase, timeout=30, metadata=as_("operator"))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED and "admin" in refused.value.details()
        stub.GetPersona(query_pb2.GetPersonaRequest(persona_id=persona.persona_id), timeout=30,
                        metadata=as_("viewer"))  # nothing was deleted
        stub.DeletePersona(erase, timeout=30, metadata=as_("admin"))

        with pytest.raises(grpc.RpcError) as refused:
            stub.GetFace(query_pb2.GetFaceRequest(face_id="any", include_embedding=True), timeout=30,
                         metadata=as_("labeller"))
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED and "operator" in refused.value.details()
        with pytest.raises(grpc.RpcError) as missing:  # an operator gets past the check to the lookup
            stub.GetFace(query_pb2.GetFaceRequest(face_id="any", include_embedding=True), timeout=30,
                         metadata=as_("operator"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
