"""visage.client's own behaviour against a real gRPC server it talks to: every RPC has a
method, the token goes on every call, UNAVAILABLE is retried with backoff by the channel's
service config (and only so many times), and every call carries a deadline."""
from __future__ import annotations

import threading
from concurrent import futures

import grpc
import pytest

from visage.client import Client, RetryPolicy
from visage.v1 import classify_pb2, classify_pb2_grpc, ingest_pb2, query_pb2, train_pb2


def snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def test_every_rpc_has_a_typed_method():
    for module in (classify_pb2, ingest_pb2, query_pb2, train_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                function = getattr(Client, snake(method.name), None)
                assert callable(function), f"Client has no {snake(method.name)} for {service.name}.{method.name}"
                assert function.__annotations__.get("return"), f"{snake(method.name)} declares no return type"


class Flaky(classify_pb2_grpc.ClassifyServiceServicer):
    """Classify fails UNAVAILABLE `failures` times, then answers; ClassifyEmbeddings waits
    until released (a call past its deadline)."""

    def __init__(self, failures: int):
        self.failures, self.attempts, self.tokens = failures, 0, []
        self.release = threading.Event()

    def Classify(self, request, context):
        self.attempts += 1
        self.tokens.append(dict(context.invocation_metadata()).get("authorization"))
        if self.attempts <= self.failures:
            context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")
        return classify_pb2.ClassifyResponse(model_version=7)

    def ClassifyEmbeddings(self, request, context):
        self.release.wait(30)
        return classify_pb2.ClassifyEmbeddingsResponse()


@pytest.fixture
def flaky_server():
    def serve(failures: int):
        servicer = Flaky(failures)
        server = grpc.server(futures.ThreadPoolExecutor(4))
        classify_pb2_grpc.add_ClassifyServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append((server, servicer))
        return servicer, f"127.0.0.1:{port}"
    servers = []
    yield serve
    for server, servicer in servers:
        servicer.release.set()
        server.stop(0)


def test_unavailable_is_retried_with_backoff_and_the_token_is_sent(flaky_server):
    servicer, address = flaky_server(failures=2)
    quick = RetryPolicy(max_attempts=4, initial_backoff=0.01, max_backoff=0.05)
    with Client(address, token="the-token", retry=quick) as visage:
        assert visage.classify(b"image").model_version == 7
    assert servicer.attempts == 3
    assert servicer.tokens == ["Bearer the-token"] * 3


def test_retries_stop_at_max_attempts(flaky_server):
    servicer, address = flaky_server(failures=10)
    with Client(address, token="t", retry=RetryPolicy(max_attempts=3, initial_backoff=0.01, max_backoff=0.02)) as visage:
        with pytest.raises(grpc.RpcError) as error:
            visage.classify(b"image")
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE and servicer.attempts == 3


def test_every_call_has_a_deadline(flaky_server):
    servicer, address = flaky_server(failures=0)
    with Client(address, token="t", timeout=0.3) as visage:
        with pytest.raises(grpc.RpcError) as error:
            visage.classify_embeddings([[0.0] * 128])
        assert error.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        servicer.release.set()
        assert visage.classify_embeddings([[0.0] * 128], timeout=30) is not None  # a per-call deadline
