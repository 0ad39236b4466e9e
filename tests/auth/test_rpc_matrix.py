"""The matrix's reading of a response stream (rpc_matrix.call_status) against a stand-in
WatchEvents: a refusal is a refusal however late it comes (a loaded machine), and a
let-through stream that never ends is read as let through from its initial metadata,
without waiting for any deadline."""
from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest
from rpc_matrix import call_status

from visage.server import open_stream
from visage.v1 import query_pb2

WATCH = query_pb2.DESCRIPTOR.services_by_name["QueryService"].methods_by_name["WatchEvents"]
# Longer than the 3 s the matrix once gave a stream to be refused in.
LATE_REFUSAL_SECONDS = 5


def refuse_late(request, context):
    time.sleep(LATE_REFUSAL_SECONDS)  # the auth check's worker thread got a core this late
    context.abort(grpc.StatusCode.PERMISSION_DENIED, "needs the operator role")
    yield  # a generator, as every response stream


def watch_forever(request, context):
    """Let in: opens the stream, then sends nothing until the caller leaves."""
    left = threading.Event()
    context.add_callback(left.set)
    open_stream(context)
    left.wait()
    return
    yield


@pytest.fixture
def serve_watch():
    servers = []

    def serve(behaviour) -> str:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.unary_stream_rpc_method_handler(
            behaviour, request_deserializer=query_pb2.WatchEventsRequest.FromString,
            response_serializer=lambda message: message.SerializeToString())
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            WATCH.containing_service.full_name, {WATCH.name: handler})])
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return f"127.0.0.1:{port}"

    yield serve
    for server in servers:
        server.stop(None)


def test_a_refusal_that_comes_late_is_read_as_a_refusal(serve_watch, plain_channel):
    with plain_channel(serve_watch(refuse_late)) as channel:
        assert call_status(channel, WATCH, []) == grpc.StatusCode.PERMISSION_DENIED


def test_a_let_through_stream_that_never_ends_is_read_from_its_initial_metadata(serve_watch, plain_channel):
    with plain_channel(serve_watch(watch_forever)) as channel:
        assert call_status(channel, WATCH, []) == grpc.StatusCode.OK  # not a deadline's end
