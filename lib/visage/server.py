"""One way to run a Visage gRPC service: health, reflection, message limits,
structured logs, a uniform handle on a started service (RunningService) and
graceful shutdown on SIGTERM/SIGINT (run_service: each `python -m visage_<name>`)."""
from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from visage import datadir, guard, metrics, placement, tracing
from visage.auth.identity import with_actor
from visage.auth.interceptor import AuthInterceptor
from visage.auth.tokens import TokenVerifier
from visage.config import Config
from visage.errors import ErrorStatusInterceptor
from visage.store import Store, open_store
from visage.store.base import stamp_events_with
from visage.v1 import classify_pb2, ingest_pb2, query_pb2, train_pb2

# Every event a request causes names its caller and trace (the store itself knows no identity).
stamp_events_with(with_actor)

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # above the 20 MB image limit, so the service can say why
SHUTDOWN_GRACE_SECONDS = 20.0
SERVER_OPTIONS = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # gRPC's default would let a second server (another test run) silently share the port.
    ("grpc.so_reuseport", 0),
)

# Initial metadata that a response stream which may wait before its first item (a watch:
# maybe hours) sends once it was let in (past the auth check and its request's
# validation): the caller knows the stream is open. A refusal has no initial metadata
# of its own (its status comes alone), so this header tells the two apart even before
# that status is read (tests/auth/rpc_matrix.py).
STREAM_OPEN = (("x-visage-stream", "open"),)


def open_stream(context: grpc.ServicerContext) -> None:
    """Sends a response stream's initial metadata now (STREAM_OPEN), not with its first item."""
    context.send_initial_metadata(STREAM_OPEN)

SERVICE_NAMES = {
    "ingest": ingest_pb2.DESCRIPTOR.services_by_name["IngestService"].full_name,
    "classifier": classify_pb2.DESCRIPTOR.services_by_name["ClassifyService"].full_name,
    "trainer": train_pb2.DESCRIPTOR.services_by_name["TrainService"].full_name,
    "query": query_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name,
}


def build_server(
    register: Callable[[grpc.Server], None],
    service_names: list[str],
    address: str,
    max_workers: int = 16,
    max_streams: int | None = None,
    verifier: TokenVerifier | None = None,
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """Creates and starts a server; returns it, its bound port and its health servicer.
    `max_workers` threads serve unary calls; up to `max_streams` (VISAGE_MAX_STREAMS)
    streaming calls get threads of their own on top (visage.guard). Every RPC but
    reflection and health needs a token (visage.auth); `verifier` defaults to the
    issuer VISAGE_AUTH_* configures (the local one by default)."""
    # Threads named by service (grpc_workers_query_1, ...): a process may run several.
    pool = _executor(max_workers, max_streams, worker_queue_name(service_names[0]) if service_names else "grpc")
    # Requests waiting for a worker thread (the executor keeps no public count of them),
    # one gauge per service: several share a process in `make run` and the tests.
    for name in service_names:
        metrics.watch_queue(worker_queue_name(name), pool.queue_depth)
    server = grpc.server(pool, options=SERVER_OPTIONS, interceptors=service_interceptors(max_streams, verifier))
    register(server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
        server,
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise RuntimeError(f"could not bind {address}")
    server.start()
    for name in [*service_names, ""]:
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("serving %s on port %d", ", ".join(service_names), port)
    return server, port, health_servicer


def worker_queue_name(service_name: str) -> str:
    """visage.v1.QueryService -> grpc_workers_query (SERVICE_NAMES' short name)."""
    short = {full: key for key, full in SERVICE_NAMES.items()}.get(service_name, service_name)
    return f"grpc_workers_{short}"


def service_interceptors(max_streams: int | None = None,
                         verifier: TokenVerifier | None = None) -> list[grpc.ServerInterceptor]:
    """Every service's interceptor chain. Metrics outermost, so they see the status
    every other layer answers with; error statuses (visage.errors) innermost, so the
    guard sees every registered kind already answered (not as unexpected)."""
    # Tracing (when OTEL_EXPORTER_OTLP_ENDPOINT is set) outermost of all: its span covers every layer.
    return [*tracing.server_interceptors(), metrics.MetricsInterceptor(), *_guard_interceptors(max_streams),
            AuthInterceptor(verifier or TokenVerifier.from_env()), ErrorStatusInterceptor()]


def _executor(unary_workers: int, max_streams: int | None, name: str = "grpc") -> guard.ElasticThreadPool:
    return guard.server_executor(unary_workers, guard.max_streams_from_env() if max_streams is None else max_streams,
                                 name)


def _guard_interceptors(max_streams: int | None) -> list[grpc.ServerInterceptor]:
    """Stream cap, bad request bytes, unexpected exceptions: see visage.guard."""
    return [guard.StreamGuard(guard.max_streams_from_env() if max_streams is None else max_streams)]


def _nothing() -> None:
    """A RunningService hook with nothing to do."""


@dataclass
class RunningService:
    """A started service, as every service's `start(config, store, address, ...)`
    returns it. `drain` runs when graceful shutdown begins (e.g. to end open
    streams that would otherwise hold the whole grace period); `close` releases
    what the service owns beside the server (threads, worker pools) once the
    server has stopped. The store stays the caller's to close."""
    server: grpc.Server
    port: int
    health: health.HealthServicer
    drain: Callable[[], None] = _nothing
    close: Callable[[], None] = _nothing

    def stop(self, grace: float | None) -> None:
        """Health goes NOT_SERVING, new calls are refused, in-flight calls get
        `grace` seconds to finish; then the service's own resources are released."""
        self.drain()
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        self.close()


def serve_until_signalled(running: RunningService) -> None:
    """Blocks until SIGTERM/SIGINT, then stops the service gracefully."""
    received: list[int] = []
    # The handler only appends to a list: taking a lock in a signal handler (as
    # Event.set does) can deadlock with the main thread holding the same lock.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: received.append(signum))
    while not received:
        time.sleep(0.2)
    log.info("shutting down")
    running.stop(SHUTDOWN_GRACE_SECONDS)


def run_service(name: str, start: Callable[[Config, Store, str], RunningService]) -> None:
    """The whole of `python -m visage_<name>`: JSON logs, the cores it may run
    on, config from the environment, the store, the service on its configured
    port until SIGTERM/SIGINT, then a graceful stop and the store closed."""
    setup_logging(name)
    cpus = placement.cpus_from_env(placement.SERVICE_CPUS_ENV)
    placement.pin_this_process(cpus)
    if cpus:
        log.info("running on CPUs %s", sorted(cpus))
    config = Config.from_env()
    port = getattr(config.ports, name)
    if scrape_port := metrics.metrics_port(port):
        metrics.serve_metrics(scrape_port, config.host)
    tracing.install(f"visage-{name}")
    datadir.secure_tree(config.data_dir)  # 0700 / 0600, also what an older version left readable
    store = open_store(config)
    running = start(config, store, f"{config.host}:{port}")
    serve_until_signalled(running)
    store.close()
    log.info("%s stopped", name)


def setup_logging(service: str) -> None:
    """JSON-lines logs on stderr, one object per record."""
    import json
    import sys

    class JsonFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            entry = {"ts": round(record.created, 3), "level": record.levelname.lower(), "service": service,
                     "logger": record.name, "msg": record.getMessage()}
            if record.exc_info:
                entry["exc"] = self.formatException(record.exc_info)
            return json.dumps(entry)

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
