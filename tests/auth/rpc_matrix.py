"""Every Visage RPC, called with an empty request as a given caller: the
status tells whether the auth check let the call through. Shared by the direct
gRPC matrix (tests/auth) and the one through Envoy (tests/gateway)."""
from __future__ import annotations

import grpc
from google.protobuf import message_factory

from visage.auth.roles import Role, least_role
from visage.server import STREAM_OPEN
from visage.v1 import classify_pb2, ingest_pb2, query_pb2, train_pb2

AUTH_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
# Every call ends with its status, or (a let-through stream that may stay open: a watch)
# says it is open in its initial metadata: this deadline is only a hang guard, never
# the way an answer is expected to come on a loaded machine.
HANG_GUARD_SECONDS = 120
SERVICE_BY_NAME = {"query": query_pb2, "ingest": ingest_pb2, "trainer": train_pb2, "classifier": classify_pb2}


def all_methods():
    """(service name, method descriptor) for every RPC in the protos."""
    for name, module in SERVICE_BY_NAME.items():
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                yield name, method


def grpc_path(method) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def call_status(channel: grpc.Channel, method, metadata) -> grpc.StatusCode:
    """Calls `method` with an empty request (and, for a client stream, no items)."""
    request = message_factory.GetMessageClass(method.input_type)()
    response_class = message_factory.GetMessageClass(method.output_type)
    kind = ("stream" if method.client_streaming else "unary") + "_" + ("stream" if method.server_streaming else "unary")
    callable_ = getattr(channel, kind)(grpc_path(method), request_serializer=type(request).SerializeToString,
                                       response_deserializer=response_class.FromString)
    argument = iter(()) if method.client_streaming else request
    try:
        result = callable_(argument, timeout=HANG_GUARD_SECONDS, metadata=metadata)
        if method.server_streaming:
            return stream_status(result)
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        return error.code()


def stream_status(call) -> grpc.StatusCode:
    """OK for a stream that says it is open (STREAM_OPEN: let in; it is cancelled
    then, a watch would never end); otherwise the status it ends with. A refusal
    sends no initial metadata of its own, so initial_metadata() returns with it."""
    if set(STREAM_OPEN) <= set(call.initial_metadata() or ()):
        call.cancel()
        return grpc.StatusCode.OK
    for _ in call:  # a stream that ends by itself: its status (raised unless OK)
        pass
    return grpc.StatusCode.OK


def expected(role: Role | None, method) -> str:
    if role is None:
        return "unauthenticated"
    return "allowed" if role >= least_role(grpc_path(method)) else "permission_denied"


def outcome(code: grpc.StatusCode) -> str:
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return "unauthenticated"
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return "permission_denied"
    return "allowed"
