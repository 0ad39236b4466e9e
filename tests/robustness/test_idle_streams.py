"""Long-lived streams never starve unary calls or health: with hundreds of idle
watchers and client streams open on one service, its unary calls and its
health check still answer (each service used to serve everything from one
16-thread pool, so 17 idle streams froze it)."""
from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from visage.config import Config
from visage.mesh import start_in_process
from visage.store import open_store
from visage.store.sqlite import SqliteStore
from visage.v1 import classify_pb2, classify_pb2_grpc, ingest_pb2, ingest_pb2_grpc, query_pb2, query_pb2_grpc
from visage.v1 import train_pb2, train_pb2_grpc
from visage_trainer.training import TrainerSettings
from tests.waiting import wait_until

ANSWER_SECONDS = 30  # generous: the point is that the call is served at all
IDLE_WATCHERS = 500
IDLE_CLIENT_STREAMS = 100


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    config = Config(data_dir=tmp_path_factory.mktemp("idle-streams"), workers=1)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(config)
    with start_in_process(config, store, trainer_settings=TrainerSettings(debounce_seconds=1.0)) as services:
        yield services
    store.close()


def never_sends(stop: threading.Event, message) -> Iterator:
    """A client stream that stays open and silent until `stop`."""
    stop.wait()
    return
    yield message  # makes this a generator


def assert_serving(channel: grpc.Channel) -> None:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=ANSWER_SECONDS)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_500_idle_watchers_leave_query_unary_calls_and_health_answering(mesh):
    with grpc.insecure_channel(f"127.0.0.1:{mesh.ports['query']}") as channel:
        stub = query_pb2_grpc.QueryServiceStub(channel)
        watchers = [stub.WatchEvents(query_pb2.WatchEventsRequest()) for _ in range(IDLE_WATCHERS)]
        try:
            for watcher in watchers:  # each is open on the server (it sends headers when it starts)
                watcher.initial_metadata()
            # Created after the watchers on the same connection: served after them, not instead.
            persona = stub.CreatePersona(query_pb2.CreatePersonaRequest(persona={"display_name": "Raj"}),
                                         timeout=ANSWER_SECONDS)
            assert stub.GetPersona(query_pb2.GetPersonaRequest(persona_id=persona.persona_id),
                                   timeout=ANSWER_SECONDS).display_name == "Raj"
            assert_serving(channel)
            assert all(watcher.is_active() for watcher in watchers)
        finally:
            for watcher in watchers:
                watcher.cancel()


def test_idle_training_watchers_leave_the_trainer_answering(mesh):
    with grpc.insecure_channel(f"127.0.0.1:{mesh.ports['trainer']}") as channel:
        stub = train_pb2_grpc.TrainServiceStub(channel)
        threads_before = threading.active_count()  # the mesh runs in this process
        watchers = [stub.WatchTrainingJobs(train_pb2.WatchTrainingJobsRequest()) for _ in range(IDLE_CLIENT_STREAMS)]
        try:
            for watcher in watchers:
                watcher.initial_metadata()
            # An idle watch holds no thread (visage.nonblocking; each used to hold one): the threads
            # that took the calls end once idle.
            wait_until(lambda: threading.active_count() < threads_before + IDLE_CLIENT_STREAMS // 2,
                       f"threads near {threads_before} with {IDLE_CLIENT_STREAMS} watchers open")
            stub.ListTrainingJobs(train_pb2.ListTrainingJobsRequest(), timeout=ANSWER_SECONDS)
            assert_serving(channel)
        finally:
            for watcher in watchers:
                watcher.cancel()


@pytest.mark.parametrize("service", ["ingest", "classifier"])
def test_100_idle_client_streams_leave_unary_calls_and_health_answering(mesh, service):
    stop = threading.Event()
    with grpc.insecure_channel(f"127.0.0.1:{mesh.ports[service]}") as channel:
        if service == "ingest":
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            streams = [stub.IngestImages.future(never_sends(stop, ingest_pb2.IngestImagesRequest()))
                       for _ in range(IDLE_CLIENT_STREAMS)]
            unary = lambda: stub.IngestImage(ingest_pb2.IngestImageRequest(content=b"x"),  # noqa: E731
                                             timeout=ANSWER_SECONDS)
        else:
            stub = classify_pb2_grpc.ClassifyServiceStub(channel)
            streams = [stub.ClassifyStream(never_sends(stop, classify_pb2.ClassifyStreamRequest()))
                       for _ in range(IDLE_CLIENT_STREAMS)]
            unary = lambda: stub.Classify(classify_pb2.ClassifyRequest(content=b"x"),  # noqa: E731
                                          timeout=ANSWER_SECONDS)
        try:
            # A unary call created after the streams answers (here: bad bytes, a clear refusal).
            with pytest.raises(grpc.RpcError) as refused:
                unary()
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value
            assert_serving(channel)
        finally:
            stop.set()
            for stream in streams:
                stream.cancel()


def test_streams_beyond_the_cap_are_refused_with_resource_exhausted(tmp_path):
    """The cap is what keeps threads for unary calls: past it, a stream is refused, not queued."""
    from visage_query.server import start

    store = SqliteStore(tmp_path / "visage.db")
    store.migrate()
    service = start(Config(data_dir=tmp_path), store, "127.0.0.1:0", max_watchers=3)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = query_pb2_grpc.QueryServiceStub(channel)
            open_ = [stub.WatchEvents(query_pb2.WatchEventsRequest()) for _ in range(3)]
            for watcher in open_:
                watcher.initial_metadata()
            with pytest.raises(grpc.RpcError) as refused:
                next(stub.WatchEvents(query_pb2.WatchEventsRequest(), timeout=ANSWER_SECONDS))
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "limit 3" in refused.value.details()
            assert stub.ListPersonas(query_pb2.ListPersonasRequest(), timeout=ANSWER_SECONDS) is not None
            for watcher in open_:
                watcher.cancel()
    finally:
        service.stop(grace=0)
        store.close()
