"""One way to run a Visage gRPC service: health, reflection, message limits,
structured logs and graceful shutdown on SIGTERM/SIGINT."""
from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from visage.v1 import classify_pb2, ingest_pb2, query_pb2, train_pb2

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # above the 20 MB image limit, so the service can say why
SHUTDOWN_GRACE_SECONDS = 20.0

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
) -> tuple[grpc.Server, int, health.HealthServicer]:
    """Creates and starts a server; returns it, its bound port and its health servicer."""
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
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


def serve_until_signalled(
    server: grpc.Server,
    health_servicer: health.HealthServicer,
    on_stop: Callable[[], None] = lambda: None,
) -> None:
    """Blocks until SIGTERM/SIGINT, then drains: health goes NOT_SERVING, new
    calls are refused, in-flight calls get the grace period to finish."""
    received: list[int] = []
    # The handler only appends to a list: taking a lock in a signal handler (as
    # Event.set does) can deadlock with the main thread holding the same lock.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: received.append(signum))
    while not received:
        time.sleep(0.2)
    log.info("shutting down")
    health_servicer.enter_graceful_shutdown()
    server.stop(SHUTDOWN_GRACE_SECONDS).wait()
    on_stop()


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
