"""Health and reflection are open to anyone, so they must never take what
authenticated work needs (issue 25, finding 1 and 2): anonymous health Watch
streams used to count against the stream cap (1,000 of them and WatchEvents
was RESOURCE_EXHAUSTED) and each held a thread; every stream's thread stayed
in the pool after it closed; and closing many watchers froze the query
service (every cancellation woke every watcher on one shared condition).

Waits are for conditions, with long hang guards; nothing asserts on time."""
from __future__ import annotations

import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2_grpc

from visage.config import Config
from visage.store.sqlite import SqliteStore
from visage.v1 import query_pb2, query_pb2_grpc
from tests.reflection_stream import OpenReflectionRequests
from tests.waiting import wait_until

HANG_GUARD_SECONDS = 180
CAP = 3  # the service's stream cap in these tests: small, so a few anonymous streams would fill it


@pytest.fixture
def query_service(tmp_path):
    from visage_query.server import start

    store = SqliteStore(tmp_path / "visage.db")
    store.migrate()
    service = start(Config(data_dir=tmp_path), store, "127.0.0.1:0", max_watchers=CAP)
    yield service
    service.stop(grace=0)
    store.close()


def open_watchers(channel: grpc.Channel, n: int) -> list:
    stub = query_pb2_grpc.QueryServiceStub(channel)
    watchers = [stub.WatchEvents(query_pb2.WatchEventsRequest()) for _ in range(n)]
    for watcher in watchers:
        watcher.initial_metadata()  # sent once the server let the stream in
    return watchers


def test_anonymous_health_watches_take_no_stream_slot_and_no_thread(query_service, plain_channel):
    pool = query_service.server._state.thread_pool  # this service's own pool (visage.guard)
    threads_before = pool.threads
    with plain_channel(f"127.0.0.1:{query_service.port}") as anonymous:
        health = health_pb2_grpc.HealthStub(anonymous)
        watches = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(200)]
        try:
            for watch in watches:  # each is open and answered: SERVING
                assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            # Not a thread per watch (the pool keeps at most its unary threads besides).
            assert pool.threads - threads_before < 50
            with grpc.insecure_channel(f"127.0.0.1:{query_service.port}") as channel:
                watchers = open_watchers(channel, CAP)  # the whole cap is still there for WatchEvents
                assert all(watcher.is_active() for watcher in watchers)
                for watcher in watchers:
                    watcher.cancel()
        finally:
            for watch in watches:
                watch.cancel()


def test_reflection_streams_have_their_own_budget_per_caller(query_service, plain_channel):
    with plain_channel(f"127.0.0.1:{query_service.port}") as anonymous:
        stub = reflection_pb2_grpc.ServerReflectionStub(anonymous)
        opened, refused, request_streams = [], [], []
        try:
            for _ in range(10):
                requests = OpenReflectionRequests()
                request_streams.append(requests)
                call = stub.ServerReflectionInfo(iter(requests), timeout=HANG_GUARD_SECONDS)
                try:
                    next(call)  # answered: the stream is open and holds its thread
                    opened.append(call)
                except grpc.RpcError as error:
                    refused.append(error)
            assert len(opened) == 4, "a caller may hold 4 reflection streams"
            assert refused and all(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for e in refused)
            assert "reflection" in refused[0].details()
            with grpc.insecure_channel(f"127.0.0.1:{query_service.port}") as channel:
                watchers = open_watchers(channel, CAP)  # reflection took none of the stream cap
                for watcher in watchers:
                    watcher.cancel()
        finally:
            for requests in request_streams:
                requests.close()
            for call in opened:
                call.cancel()


def test_opening_and_closing_1000_watchers_leaves_no_threads(tmp_path):
    from visage_query.server import start

    store = SqliteStore(tmp_path / "visage.db")
    store.migrate()
    service = start(Config(data_dir=tmp_path), store, "127.0.0.1:0")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = query_pb2_grpc.QueryServiceStub(channel)
            stub.ListPersonas(query_pb2.ListPersonasRequest(), timeout=HANG_GUARD_SECONDS)
            pool = service.server._state.thread_pool  # this service's own pool (visage.guard)
            baseline = pool.threads
            watchers = open_watchers(channel, 1000)
            assert pool.threads >= baseline + 900  # a sync gRPC stream holds a thread while open
            for watcher in watchers:
                watcher.cancel()
            # Unary calls and health answer while the watchers leave.
            assert stub.ListPersonas(query_pb2.ListPersonasRequest(), timeout=HANG_GUARD_SECONDS) is not None
            wait_until(lambda: pool.threads <= baseline + 20, f"threads back near {baseline} (now {pool.threads})")
    finally:
        service.stop(grace=0)
        store.close()


def test_cancelling_n_watchers_wakes_each_once_not_every_watcher(tmp_path):
    """The query service froze for seconds when 1,000 watchers closed: each
    cancellation woke all of them. Counted here as the watchers' checks."""
    from visage_query import events

    store = SqliteStore(tmp_path / "visage.db")
    store.migrate()
    new_events = events.NewEvents(store, poll_seconds=3600)  # no poller wake-ups during the test
    checks = [0]
    lock = threading.Lock()

    def should_stop() -> bool:
        with lock:
            checks[0] += 1
        return False

    n = 200
    stops = [threading.Event() for _ in range(n)]
    waiters = [threading.Thread(target=new_events.wait, args=(new_events.generation, stop, should_stop))
               for stop in stops]
    for thread in waiters:
        thread.start()
    wait_until(lambda: len(new_events._waiting) == n, "every watcher waiting")
    before = checks[0]
    for stop, thread in zip(stops, waiters):
        new_events.cancel(stop)  # what the service does when a caller goes away
        thread.join(HANG_GUARD_SECONDS)
        assert not thread.is_alive()
    assert checks[0] - before <= 3 * n  # was n * n / 2: every cancellation woke every watcher
    store.close()
