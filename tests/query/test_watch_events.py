"""WatchEvents: live delivery in order, replay from a cursor, filters, and
prompt ends (cancel, deadline, server stop)."""
from __future__ import annotations

import queue
import threading
import time

import grpc
import pytest

from visage.v1 import query_pb2, query_pb2_grpc
from visage.v1 import resources_pb2 as pb
from visage_query.server import start

from query_calls import create, rpc_error

WAIT = 5.0  # generous: the machine is shared; the service polls every 100 ms


class Watch:
    """A WatchEvents call read on a background thread, so a test can wait for
    events with a timeout and see how the stream ended."""

    def __init__(self, stub, request: query_pb2.WatchEventsRequest, timeout: float | None = None):
        self.call = stub.WatchEvents(request, timeout=timeout)
        self.events: queue.Queue = queue.Queue()
        self.ended = threading.Event()
        self.error: grpc.RpcError | None = None
        threading.Thread(target=self._read, daemon=True).start()
        self.call.initial_metadata()  # the server sends it once the watch is in place

    def _read(self):
        try:
            for event in self.call:
                self.events.put(event)
        except grpc.RpcError as error:
            self.error = error
        finally:
            self.ended.set()

    def take(self, n: int) -> list[pb.Event]:
        return [self.events.get(timeout=WAIT) for _ in range(n)]

    def assert_nothing_more(self, wait: float = 0.5):
        with pytest.raises(queue.Empty):
            self.events.get(timeout=wait)


def test_delivers_new_events_in_order_from_now(stub, store):
    store.append_event(pb.EVENT_TYPE_IMAGE_INGESTED, "before-the-watch")
    watch = Watch(stub, query_pb2.WatchEventsRequest())
    appended = [store.append_event(pb.EVENT_TYPE_TRAINING_PROGRESS, "job-1", {"done": str(n), "total": "5"})
                for n in range(5)]
    events = watch.take(5)
    assert [event.cursor for event in events] == [record.cursor for record in appended]
    assert [event.attributes["done"] for event in events] == ["0", "1", "2", "3", "4"]
    assert events[0].type == pb.EVENT_TYPE_TRAINING_PROGRESS and events[0].subject == "job-1"
    assert events[0].create_time.seconds > 0
    watch.assert_nothing_more()
    watch.call.cancel()


def test_persona_writes_show_up_as_events(stub):
    watch = Watch(stub, query_pb2.WatchEventsRequest(types=[pb.EVENT_TYPE_PERSONA_CREATED]))
    persona = create(stub, "Sheldon")
    event, = watch.take(1)
    assert event.subject == persona.persona_id
    watch.call.cancel()


def test_replays_after_a_cursor_then_follows(stub, store):
    first = store.append_event(pb.EVENT_TYPE_IMAGE_INGESTED, "a")
    store.append_event(pb.EVENT_TYPE_IMAGE_INGESTED, "b")
    store.append_event(pb.EVENT_TYPE_IMAGE_INGESTED, "c")
    watch = Watch(stub, query_pb2.WatchEventsRequest(after_cursor=first.cursor))
    assert [event.subject for event in watch.take(2)] == ["b", "c"]
    store.append_event(pb.EVENT_TYPE_IMAGE_INGESTED, "d")
    assert [event.subject for event in watch.take(1)] == ["d"]
    watch.call.cancel()


def test_filters_by_type(stub, store):
    watch = Watch(stub, query_pb2.WatchEventsRequest(
        types=[pb.EVENT_TYPE_RECLASSIFY_PROGRESS, pb.EVENT_TYPE_MODEL_VERSION_ACTIVATED]))
    store.append_event(pb.EVENT_TYPE_IMAGE_INGESTED, "skip-1")
    store.append_event(pb.EVENT_TYPE_RECLASSIFY_PROGRESS, "1", {"done": "10", "total": "100"})
    store.append_event(pb.EVENT_TYPE_TRAINING_PROGRESS, "skip-2")
    store.append_event(pb.EVENT_TYPE_MODEL_VERSION_ACTIVATED, "2")
    assert [(event.type, event.subject) for event in watch.take(2)] == [
        (pb.EVENT_TYPE_RECLASSIFY_PROGRESS, "1"), (pb.EVENT_TYPE_MODEL_VERSION_ACTIVATED, "2")]
    watch.assert_nothing_more()
    watch.call.cancel()


def test_catches_up_over_many_events(stub, store):
    start_cursor = store.append_event(pb.EVENT_TYPE_IMAGE_INGESTED, "start").cursor
    for n in range(2500):  # more than one store read
        store.append_event(pb.EVENT_TYPE_PREDICTIONS_WRITTEN, str(n))
    watch = Watch(stub, query_pb2.WatchEventsRequest(after_cursor=start_cursor))
    assert [event.subject for event in watch.take(2500)] == [str(n) for n in range(2500)]
    watch.call.cancel()


def test_cancel_frees_the_stream(config, store):
    service = start(config, store, "127.0.0.1:0", max_watchers=1)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = query_pb2_grpc.QueryServiceStub(channel)
            first = Watch(stub, query_pb2.WatchEventsRequest())
            error = rpc_error(lambda request: list(stub.WatchEvents(request, timeout=WAIT)),
                              query_pb2.WatchEventsRequest())
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            first.call.cancel()
            assert first.ended.wait(WAIT)
            deadline = time.monotonic() + WAIT
            while True:  # the server notices the cancel within a poll interval
                second = Watch(stub, query_pb2.WatchEventsRequest(), timeout=WAIT)
                second.ended.wait(0.3)
                if second.error is None or time.monotonic() > deadline:
                    break
            assert second.error is None, second.error
            second.call.cancel()
    finally:
        service.stop(grace=0)


def test_deadline_ends_the_stream(stub, store):
    # Whether an event appended now arrives within the 0.5 s depends on the machine's load (a busy
    # Cassandra took longer), so only what the deadline does is asserted: the stream ends with it.
    watch = Watch(stub, query_pb2.WatchEventsRequest(), timeout=0.5)
    assert watch.ended.wait(WAIT)
    assert watch.error.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_server_stop_ends_open_streams_promptly(config, store):
    service = start(config, store, "127.0.0.1:0")
    with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        watch = Watch(query_pb2_grpc.QueryServiceStub(channel), query_pb2.WatchEventsRequest())
        began = time.monotonic()
        service.stop(grace=30)  # would wait the whole grace if the stream did not end itself
        assert time.monotonic() - began < 10
        assert watch.ended.wait(WAIT)
        assert watch.error.code() == grpc.StatusCode.UNAVAILABLE
        assert "cursor" in watch.error.details()


@pytest.mark.parametrize("request_message, field", [
    (query_pb2.WatchEventsRequest(after_cursor="not-a-cursor"), "after_cursor"),
    (query_pb2.WatchEventsRequest(types=[pb.EVENT_TYPE_UNSPECIFIED]), "types"),
    (query_pb2.WatchEventsRequest(types=[99]), "types"),
])
def test_invalid_watch_requests(stub, request_message, field):
    error = rpc_error(lambda request: list(stub.WatchEvents(request, timeout=WAIT)), request_message)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and field in error.details()
    stub.ListPersonas(query_pb2.ListPersonasRequest())
