"""Every Visage RPC, called with an empty request as a given caller: the
status tells whether the auth check let the call through. Shared by the direct
gRPC matrix (tests/auth) and the one through Envoy (tests/gateway)."""
from __future__ import annotations

import grpc
from google.protobuf import message_factory

from visage.auth.roles import Role, least_role
from visage.v1 import classify_pb2, ingest_pb2, query_pb2, train_pb2

AUTH_CODES = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
# A stream that the check let through may stay open (WatchEvents): it is ended
# by this deadline, and DEADLINE_EXCEEDED then means "let through". A refused
# call is answered at once, whatever the deadline.
STREAM_DEADLINE_SECONDS = 3
UNARY_DEADLINE_SECONDS = 60
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
    streams = method.client_streaming or method.server_streaming
    argument = iter(()) if method.client_streaming else request
    timeout = STREAM_DEADLINE_SECONDS if streams else UNARY_DEADLINE_SECONDS
    try:
        result = callable_(argument, timeout=timeout, metadata=metadata)
        if method.server_streaming:
            for _ in result:
                pass
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        return error.code()


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
