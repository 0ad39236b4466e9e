"""What anyone without a token can open through the gateway (issue 25, findings
1 and 2): gRPC health only as /healthz (x-visage-service used to let a caller
hold health Watch streams on any service through Envoy), and 1,000 SSE
watches open through Envoy hold no thread each in the query service, and leave
none behind when they close. Waits are for conditions with long hang guards; nothing asserts on time."""
from __future__ import annotations

import os
import socket
import threading

import grpc
import pytest

from grpc_health.v1 import health_pb2, health_pb2_grpc

from visage import metrics
from tests.reflection_stream import OpenReflectionRequests
from tests.waiting import wait_until

HANG_GUARD_SECONDS = 240
WATCH_METHOD = "/visage.v1.QueryService/WatchEvents"


def query_threads() -> int:
    """Threads of the query service's gRPC pool (named after it: visage.server.build_server)."""
    return sum(t.name.startswith("grpc_workers_query_") for t in threading.enumerate())




@pytest.mark.parametrize("service", ["query", "ingest", "classifier", "trainer"])
def test_grpc_health_is_not_served_through_the_gateway(gateway, plain_channel, service):
    assert gateway.request("GET", "/healthz", anonymous=True)[0] == 200
    with plain_channel(f"127.0.0.1:{gateway.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        picked = (("x-visage-service", service),)
        with pytest.raises(grpc.RpcError) as check:
            health.Check(health_pb2.HealthCheckRequest(), metadata=picked, timeout=HANG_GUARD_SECONDS)
        assert check.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.RpcError) as watch:
            next(health.Watch(health_pb2.HealthCheckRequest(), metadata=picked, timeout=HANG_GUARD_SECONDS))
        assert watch.value.code() == grpc.StatusCode.UNIMPLEMENTED


def in_flight_watches() -> float:
    return metrics.RPC_IN_FLIGHT.labels(WATCH_METHOD)._value.get()


def open_sse(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=HANG_GUARD_SECONDS)
    sock.sendall((f"GET /v1/events:watch HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                  f"authorization: Bearer {os.environ['VISAGE_TOKEN']}\r\n\r\n").encode())
    return sock


def test_1000_sse_watches_opened_and_closed_through_envoy_leave_no_threads(gateway):
    assert gateway.request("GET", "/v1/personas")[0] == 200
    baseline = query_threads()
    threads_before = threading.active_count()  # the mesh runs in this process
    before = in_flight_watches()
    sockets = []
    try:
        for _ in range(1000):
            sockets.append(open_sse(gateway.port))
        wait_until(lambda: in_flight_watches() >= before + 1000, "1,000 watches open at the query service")
        # An idle watch holds no thread (visage.nonblocking; it used to hold one each): the threads
        # that took the calls end once idle.
        wait_until(lambda: threading.active_count() < threads_before + 100,
                   f"threads near {threads_before} with 1,000 watches open (now {threading.active_count()})")
        assert gateway.request("GET", "/v1/personas")[0] == 200
    finally:
        for sock in sockets:
            sock.close()
    # While they close, REST still answers.
    assert gateway.request("GET", "/v1/personas")[0] == 200
    wait_until(lambda: in_flight_watches() <= before, "every watch closed at the query service")
    wait_until(lambda: query_threads() <= baseline + 20,
               f"threads back near {baseline} (now {query_threads()})")
    assert gateway.request("GET", "/v1/personas")[0] == 200


def open_reflection_streams(port: int, plain_channel, headers_for) -> tuple[list, list]:
    """Tries 8 reflection streams through Envoy (the n-th with headers_for(n)); returns (opened, refused)."""
    from grpc_reflection.v1alpha import reflection_pb2_grpc

    opened, refused, streams = [], [], []
    with plain_channel(f"127.0.0.1:{port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        try:
            for n in range(8):
                requests = OpenReflectionRequests()
                streams.append(requests)
                call = stub.ServerReflectionInfo(iter(requests), metadata=(*headers_for(n), ("x-visage-service", "query")),
                                                 timeout=HANG_GUARD_SECONDS)
                try:
                    next(call)
                    opened.append(call)
                except grpc.RpcError as error:
                    refused.append(error)
        finally:
            for requests in streams:
                requests.close()
            for call in opened:
                call.cancel()
    return opened, refused


def test_the_caller_is_the_address_envoy_saw_not_a_forwarded_for_header(gateway, plain_channel):
    """Issue 25, finding 6: fairness took the FIRST X-Forwarded-For entry, which the
    client writes, so one caller could pose as many. Seen here through the per-caller
    budget of reflection streams (4): varying the header (and sending the gateway's own
    caller header) does not buy a fifth."""
    opened, refused = open_reflection_streams(gateway.port, plain_channel, lambda n: (
        ("x-forwarded-for", f"203.0.113.{n}"), ("x-visage-caller", f"198.51.100.{n}")))
    assert len(opened) == 4 and len(refused) == 4, [e.details() for e in refused]
    assert all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in refused)


def test_behind_a_trusted_load_balancer_the_caller_is_the_address_it_names(mesh, plain_channel, tmp_path):
    """VISAGE_GATEWAY_TRUSTED_HOPS=1: the last X-Forwarded-For entry (the one a load balancer in
    front appends) is the caller; two callers get a budget each."""
    from gateway_stack import start_gateway

    gateway = start_gateway(mesh.ports, tmp_path, {"VISAGE_GATEWAY_TRUSTED_HOPS": "1"})
    try:
        opened, refused = open_reflection_streams(gateway.port, plain_channel, lambda n: (
            ("x-forwarded-for", f"198.51.100.9, 203.0.113.{n % 2}"),))
    finally:
        gateway.stop()
    assert len(opened) == 8 and not refused, [e.details() for e in refused]
