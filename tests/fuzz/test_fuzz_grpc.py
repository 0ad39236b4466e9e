"""Random protobuf for every RPC of every service: raw random bytes, random
(often hostile) field values, and serialized messages with bytes flipped.
Nothing answers INTERNAL or UNKNOWN, nothing hangs, every service stays up."""
from __future__ import annotations

import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from visage.server import SERVICE_NAMES
from visage.v1 import classify_pb2, ingest_pb2, query_pb2, train_pb2

from fuzz_generators import CALL_TIMEOUT, random_request_bytes

SEED = 2626
CASES_PER_METHOD = 130
STREAM_OPEN_SECONDS = 3.0  # a watch that is still open (and quiet) after this is healthy, not hung
MODULES = {"ingest": ingest_pb2, "classifier": classify_pb2, "trainer": train_pb2, "query": query_pb2}
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE}


def methods():
    """(service name, method descriptor, request class) for every RPC."""
    for name, module in MODULES.items():
        service = module.DESCRIPTOR.services_by_name[SERVICE_NAMES[name].rsplit(".", 1)[-1]]
        for method in service.methods:
            request_class = _message_class(method.input_type)
            yield name, method, request_class


def _message_class(descriptor):
    from google.protobuf import message_factory
    return message_factory.GetMessageClass(descriptor)


def call_once(channel: grpc.Channel, method, requests: list[bytes]) -> grpc.StatusCode | str:
    path = f"/{method.containing_service.full_name}/{method.name}"
    identity = lambda data: data  # noqa: E731 - send and receive raw bytes
    server_stream = method.server_streaming
    try:
        if method.client_streaming and server_stream:
            call = channel.stream_stream(path, identity, identity)(iter(requests), timeout=CALL_TIMEOUT)
            list(call)
        elif method.client_streaming:
            channel.stream_unary(path, identity, identity)(iter(requests), timeout=CALL_TIMEOUT)
        elif server_stream:
            # A watch may rightly stay open and quiet: a short deadline ends it.
            call = channel.unary_stream(path, identity, identity)(requests[0], timeout=STREAM_OPEN_SECONDS)
            try:
                list(call)
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    return grpc.StatusCode.OK
                raise
        else:
            channel.unary_unary(path, identity, identity)(requests[0], timeout=CALL_TIMEOUT)
    except grpc.RpcError as error:
        if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return "hang"
        return error.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("service", list(MODULES))
def test_random_protobuf_for_every_rpc_gets_a_documented_status(fuzz_stack, service):
    rng = random.Random(f"{SEED}-{service}")
    cases = []
    for name, method, request_class in methods():
        if name != service:
            continue
        for _ in range(CASES_PER_METHOD):
            count = rng.randint(0, 3) if method.client_streaming else 1
            cases.append((method, [random_request_bytes(request_class, rng, fuzz_stack.ids, fuzz_stack.images)
                                   for _ in range(count)]))
    channel_options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    with grpc.insecure_channel(f"127.0.0.1:{fuzz_stack.mesh.ports[service]}", options=channel_options) as channel:
        with ThreadPoolExecutor(max_workers=16) as threads:
            results = list(threads.map(lambda case: call_once(channel, *case), cases))
    failures = [(method.name, result) for (method, _), result in zip(cases, results)
                if result in FORBIDDEN or result == "hang"]
    codes = Counter(str(result).removeprefix("StatusCode.") for result in results)
    print(f"gRPC fuzz {service}: {len(cases)} cases, statuses {dict(sorted(codes.items()))}")
    assert not failures, f"seed {SEED}-{service}: {len(failures)} bad answers, e.g. {failures[:10]}"
    assert codes["OK"] and codes["INVALID_ARGUMENT"], codes  # cases reached the handlers
    fuzz_stack.assert_all_healthy()
