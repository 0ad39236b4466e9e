"""Prometheus metrics of a service process (prometheus-client), for many replicas behind
one gateway: every RPC counted and timed by method and status code (MetricsInterceptor,
installed by visage.server.build_server), the requests queued for a worker thread and
in flight, and the re-classification's throughput. `python -m visage_<name>` serves
them on VISAGE_METRICS_PORT (default: the service's port + 1000; 0: off) at /metrics.
"""
from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from visage import nonblocking
from visage.config import ServerSettings, env_name

log = logging.getLogger(__name__)

METRICS_PORT_ENV = env_name(ServerSettings, "metrics_port")  # VISAGE_METRICS_PORT
METRICS_PORT_OFFSET = 1000
HEALTH_PREFIX = "/grpc.health.v1.Health/"

RPC_REQUESTS = Counter("visage_rpc_requests", "RPCs answered, by full method name and status code",
                       ["method", "code"])
RPC_SECONDS = Histogram("visage_rpc_duration_seconds", "Time to answer an RPC (a stream: until it ends)",
                        ["method"], buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
RPC_IN_FLIGHT = Gauge("visage_rpc_in_flight", "RPCs being answered now", ["method"])
QUEUE_DEPTH = Gauge("visage_queue_depth", "Work waiting in a queue of this process", ["queue"])
RECLASSIFIED_FACES = Counter("visage_reclassified_faces",
                             "Faces this replica's re-classification covered (predicted again, or an incremental run "
                             "found their verdict cannot change)")
RECLASSIFY_RATE = Gauge("visage_reclassify_faces_per_second",
                        "Re-classification rate of the current run, all replicas' shards together")
FACES_PREDICTED = Counter("visage_reclassify_faces_predicted",
                          "Faces this replica's re-classification ran the model on (an incremental pass: "
                          "only those whose verdict may change)")
SHARDS_CLAIMED = Counter("visage_reclassify_shards_claimed", "Re-classification shards this replica claimed")
STORE_OVERLOADED_RETRIES = Counter("visage_store_overloaded_retries",
                                   "Store requests sent again after the database answered overloaded "
                                   "(Cosmos DB's 429, Cassandra's Overloaded)")
PREDICTIONS_WRITTEN = Counter("visage_predictions_written",
                              "Verdicts this replica's re-classification wrote (only those that changed)")


def watch_queue(name: str, depth: Callable[[], int]) -> None:
    """visage_queue_depth{queue=name} reads depth() at every scrape."""
    QUEUE_DEPTH.labels(queue=name).set_function(depth)


def metrics_port(service_port: int) -> int:
    """The port to serve /metrics on (0: none). Raises ValueError for a malformed setting."""
    port = ServerSettings.read("metrics_port")  # "nine": "VISAGE_METRICS_PORT='nine' is not a port number"
    if port is None:
        return service_port + METRICS_PORT_OFFSET if service_port else 0
    if not 0 <= port <= 65535:
        raise ValueError(f"{METRICS_PORT_ENV}={port!r} is not a port number (0-65535; 0 turns metrics off)")
    return port


def serve_metrics(port: int, host: str = "0.0.0.0") -> bool:
    """Serves /metrics over HTTP on a daemon thread. A port already taken is logged, not
    fatal: the service itself must still come up."""
    try:
        start_http_server(port, addr=host)
    except OSError as error:
        log.error("cannot serve metrics on %s:%d (%s); set %s to a free port or 0", host, port, error,
                  METRICS_PORT_ENV)
        return False
    log.info("metrics on http://%s:%d/metrics", host, port)
    return True


class MetricsInterceptor(grpc.ServerInterceptor):
    """Counts and times every RPC by method and the status code it ended with."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        # Health is answered as grpc's servicer answers it (its Watch holds no thread: wrapping would add one).
        if handler is None or handler_call_details.method.startswith(HEALTH_PREFIX):
            return handler
        method = handler_call_details.method
        for kind, wrap in (("unary_unary", _unary), ("stream_unary", _unary),
                           ("unary_stream", _streaming), ("stream_stream", _streaming)):
            behaviour = getattr(handler, kind)
            if behaviour:
                return handler._replace(**{kind: wrap(behaviour, method)})
        return handler


def _code(context, failed: bool) -> str:
    code = context.code() if hasattr(context, "code") else None
    if code is None:
        # The caller went away (cancelled, or its deadline passed) before a status was set.
        if hasattr(context, "is_active") and not context.is_active():
            remaining = context.time_remaining() if hasattr(context, "time_remaining") else None
            return "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
        return "UNKNOWN" if failed else "OK"
    return code.name


def _unary(behaviour, method: str):
    @functools.wraps(behaviour)
    def handle(request, context):
        started, failed = time.perf_counter(), True
        RPC_IN_FLIGHT.labels(method).inc()
        try:
            response = behaviour(request, context)
            failed = False
            return response
        finally:
            _record(method, context, failed, started)
    return handle


def _streaming(behaviour, method: str):
    if nonblocking.is_non_blocking(behaviour):
        return _non_blocking(behaviour, method)

    @functools.wraps(behaviour)
    def handle(request, context):
        started, failed = time.perf_counter(), True
        RPC_IN_FLIGHT.labels(method).inc()
        try:
            yield from behaviour(request, context)
            failed = False
        finally:
            _record(method, context, failed, started)
    return handle


def _non_blocking(behaviour, method: str):
    """A stream without a thread of its own (visage.nonblocking) is recorded when the call ends."""
    @functools.wraps(behaviour)
    def handle(request, context, send):
        started = time.perf_counter()
        RPC_IN_FLIGHT.labels(method).inc()
        try:
            behaviour(request, context, send)
        except BaseException:
            _record(method, context, True, started)
            raise
        nonblocking.on_end(context, lambda: _record(method, context, False, started))
    return handle


def _record(method: str, context, failed: bool, started: float) -> None:
    RPC_IN_FLIGHT.labels(method).dec()
    RPC_SECONDS.labels(method).observe(time.perf_counter() - started)
    RPC_REQUESTS.labels(method, _code(context, failed)).inc()
