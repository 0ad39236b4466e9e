"""Health and reflection are open to anyone, so they must never take what
authenticated work needs (issue 25, finding 1 and 2): anonymous health Watch
streams used to count against the stream cap (1,000 of them and WatchEvents
was RESOURCE_EXHAUSTED) and each held a thread; every WatchEvents stream held a
thread while open, and stayed in the pool after it closed; and closing many
watchers froze the query service (every cancellation woke every watcher on one
shared condition).

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
from visage.v1 import resources_pb2 as pb
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


def process_threads() -> int:
    """Every thread of this process (the service runs in it): gRPC's pool, the event log's deliveries, ..."""
    return threading.active_count()


def resident_mib() -> int:
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(status["VmRSS"].split()[0]) // 1024


def open_and_close_1000_watchers(stub: query_pb2_grpc.QueryServiceStub, channel: grpc.Channel) -> None:
    baseline = process_threads()
    watchers = open_watchers(channel, 1000)
    # The threads that took the calls end once idle; the open watchers keep none (they kept one each).
    wait_until(lambda: process_threads() < baseline + 100,
               f"threads near {baseline} with 1,000 watchers open (now {process_threads()})")
    assert all(watcher.is_active() for watcher in watchers)
    assert stub.ListPersonas(query_pb2.ListPersonasRequest(), timeout=HANG_GUARD_SECONDS) is not None
    # Still open and following the log: an event reaches the last of them.
    stub.CreatePersona(query_pb2.CreatePersonaRequest(persona={"display_name": "Raj"}, force=True),
                       timeout=HANG_GUARD_SECONDS)
    assert next(watchers[-1]).type == pb.EVENT_TYPE_PERSONA_CREATED
    for watcher in watchers:
        watcher.cancel()
    # Unary calls answer while the watchers leave.
    assert stub.ListPersonas(query_pb2.ListPersonasRequest(), timeout=HANG_GUARD_SECONDS) is not None
    wait_until(lambda: process_threads() <= baseline + 20, f"threads back near {baseline} (now {process_threads()})")


def test_1000_open_watchers_hold_no_thread_each_and_closing_them_leaves_none(tmp_path):
    """An idle WatchEvents stream holds no thread (visage.nonblocking): with 1,000 open the
    process has about as many threads as before (it had one more per watcher), unary
    calls answer while they are open and while they close, and neither threads nor
    memory are left after (each round of 1,000 used to keep ~120 MB)."""
    from visage_query.server import start

    store = SqliteStore(tmp_path / "visage.db")
    store.migrate()
    service = start(Config(data_dir=tmp_path), store, "127.0.0.1:0")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = query_pb2_grpc.QueryServiceStub(channel)
            stub.ListPersonas(query_pb2.ListPersonasRequest(), timeout=HANG_GUARD_SECONDS)
            open_and_close_1000_watchers(stub, channel)  # the first round also warms the client's channel
            after_first = resident_mib()
            open_and_close_1000_watchers(stub, channel)
            assert resident_mib() - after_first < 50
    finally:
        service.stop(grace=0)
        store.close()


def test_closing_n_watches_wakes_none_of_the_others(tmp_path):
    """The query service froze for seconds when 1,000 watchers closed: each
    cancellation woke all of them. Counted here as deliveries started."""
    from visage_query import events

    store = SqliteStore(tmp_path / "visage.db")
    store.migrate()
    log = events.EventLog(store, poll_seconds=3600)  # no poller wake-ups during the test
    submitted = [0]
    submit = log.deliveries.submit

    def counted_submit(*args, **kwargs):
        submitted[0] += 1
        return submit(*args, **kwargs)
    log.deliveries.submit = counted_submit
    n = 200
    watches = [log.watch(store.latest_cursor(), frozenset(), [], lambda _record: None, lambda _error: None)
               for _ in range(n)]
    assert log.open_watches == n
    before = submitted[0]  # each watch's first delivery
    for watch in watches:
        watch.close()  # what the service does when a caller goes away
    assert submitted[0] == before
    assert log.open_watches == 0
    store.close()
