"""A small real OTLP/gRPC trace collector for tests: the TraceService of the
opentelemetry-proto package on a free port; every span exported to it lands in a queue."""
from __future__ import annotations

import queue
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

WAIT_SECONDS = 90  # Envoy exports every 5 s (its stats flush); a loaded machine may take longer


@dataclass(frozen=True)
class Span:
    service: str  # the resource's service.name
    name: str
    trace_id: str  # hex
    span_id: str
    parent_span_id: str  # "" for a root
    kind: int
    attributes: dict
    links: list[tuple[str, str]]  # (trace id, span id)
    status_code: int  # opentelemetry.proto.trace.v1.Status.StatusCode


def _value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: queue.Queue[Span] = queue.Queue()
        self.exports = 0
        self.seen: list[Span] = []
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.stop(0)

    def Export(self, request, context):
        self.exports += 1
        for resource_spans in request.resource_spans:
            resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.put(Span(
                        service=resource.get("service.name", ""), name=span.name, trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(), parent_span_id=span.parent_span_id.hex(), kind=span.kind,
                        attributes={kv.key: _value(kv.value) for kv in span.attributes},
                        links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                        status_code=span.status.code))
        return trace_service_pb2.ExportTraceServiceResponse()

    def wait_for(self, condition: Callable[[Span], bool], what: str, timeout: float = WAIT_SECONDS) -> Span:
        """The first span (already received or arriving within `timeout`) that meets `condition`."""
        for span in self.seen:
            if condition(span):
                return span
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                span = self.spans.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(span)
            if condition(span):
                return span
        raise AssertionError(f"no span {what} within {timeout:.0f}s; received: "
                             + "; ".join(f"{s.service} {s.name}" for s in self.seen))
