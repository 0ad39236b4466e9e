"""OpenTelemetry traces of a service process, for many replicas behind one gateway.

Off unless the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
is set: then nothing of the SDK is imported, no tracer provider is installed and no
interceptor is added, so tracing costs nothing. When set, the SDK's own environment
handling configures everything else: `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`
(default service name `visage-<service>`), `OTEL_TRACES_SAMPLER[_ARG]`, `OTEL_BSP_*`
(batching), `OTEL_EXPORTER_OTLP_HEADERS` / `_INSECURE` / `_CERTIFICATE`; `OTEL_SDK_DISABLED=true`
or `OTEL_TRACES_EXPORTER=none` turn it off again.

What is traced:
- every RPC a service answers (but health and reflection): a server span named by the full
  gRPC method, with `rpc.service`, `rpc.method` and `rpc.grpc.status_code`, the child of the
  caller's span when the request carries a W3C `traceparent` (Envoy sends one);
- every call made through `visage.auth.client.channel` (the CLI, other Python callers): a
  client span whose context goes out as `traceparent`;
- event-driven work: an event appended while a span is current carries its `traceparent`
  as an attribute, and the work it starts elsewhere (a training run, a classifier handling
  an event, a re-classification run) is a span of its own linked to the spans that caused it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc

log = logging.getLogger(__name__)

ENDPOINT_ENVS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
TRACEPARENT = "traceparent"  # the event attribute carrying the W3C context of the span that appended it
MAX_LINKS = 128  # the SDK's default span link limit
TRACER_NAME = "visage"

_lock = threading.Lock()
_provider = None  # the TracerProvider this process installed, once tracing is on


def active() -> bool:
    """Whether this process traces (install() found an endpoint)."""
    return _provider is not None


def enabled(env: Mapping[str, str] | None = None) -> bool:
    """Whether the standard OTLP variables ask for traces."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return any(env.get(name, "").strip() for name in ENDPOINT_ENVS)


def otlp_endpoint(env: Mapping[str, str] | None = None) -> str | None:
    """The OTLP/gRPC endpoint traces go to (the traces-only variable first), or None when off."""
    env = os.environ if env is None else env
    if not enabled(env):
        return None
    return next(env[name].strip() for name in ENDPOINT_ENVS if env.get(name, "").strip())


def install(default_service_name: str = "visage") -> bool:
    """Installs the SDK's tracer provider (OTLP over gRPC, batched) as this process's global
    one, once, when tracing is enabled; returns whether tracing is on. The first caller's
    default service name stands unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES name one."""
    global _provider
    with _lock:
        if _provider is not None:
            return True
        if not enabled():
            return False
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create()  # reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: default_service_name}))
        provider = TracerProvider(resource=resource)  # sampler from OTEL_TRACES_SAMPLER; flushed at exit
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # OTEL_BSP_*, OTEL_EXPORTER_OTLP_*
        trace.set_tracer_provider(provider)
        _provider = provider
        log.info("tracing on: spans of %s go to %s", resource.attributes[SERVICE_NAME], otlp_endpoint())
        return True


def force_flush(timeout_seconds: float = 30.0) -> bool:
    """Exports every span ended so far (True when there is nothing to do)."""
    return _provider.force_flush(int(timeout_seconds * 1000)) if _provider is not None else True


def server_interceptors(default_service_name: str = "visage") -> list[grpc.ServerInterceptor]:
    """The tracing interceptor for visage.server.service_interceptors (first in the chain: its span
    covers every other layer and sees the status each answers with); none when tracing is off."""
    if not install(default_service_name):
        return []
    from opentelemetry.instrumentation.grpc import filters, server_interceptor

    # Probes call health every few seconds on every replica: no span for them, nor for reflection.
    untraced = filters.any_of(filters.health_check(), filters.service_prefix("grpc.reflection"))
    return [_leaving_non_blocking(server_interceptor(filter_=filters.negate(untraced)))]


def _leaving_non_blocking(traced: grpc.ServerInterceptor) -> grpc.ServerInterceptor:
    """OpenTelemetry's interceptor wraps every behaviour as a blocking one; a stream that
    holds no thread while idle (visage.nonblocking: a watch, maybe hours long) goes untraced."""
    import grpc

    from visage import nonblocking

    class LeavingNonBlocking(grpc.ServerInterceptor):
        def intercept_service(self, continuation, handler_call_details):
            handler = continuation(handler_call_details)
            if handler is None or nonblocking.is_non_blocking(handler.unary_stream):
                return handler
            return traced.intercept_service(lambda _details: handler, handler_call_details)

    return LeavingNonBlocking()


def traced_channel(channel: grpc.Channel) -> grpc.Channel:
    """`channel` with a client span per call whose context travels as `traceparent`
    (unchanged when tracing is off)."""
    if not install("visage-client"):
        return channel
    from opentelemetry.instrumentation.grpc import client_interceptor, grpcext

    return grpcext.intercept_channel(channel, client_interceptor())  # its own kind of channel interceptor


# ---- event-driven work -------------------------------------------------------
def event_attributes() -> dict[str, str]:
    """{"traceparent": …} of the span now current, for an event appended now; {} when
    tracing is off or no span is being recorded."""
    if _provider is None:
        return {}
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return {TRACEPARENT: carrier[TRACEPARENT]} if TRACEPARENT in carrier else {}


def _links(causes: Iterable[Mapping[str, str]]):
    """Span links to the spans named by the `traceparent` of each cause (events' attributes,
    or event_attributes() captured when work was queued); causes without one are skipped."""
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    propagator, links, seen = TraceContextTextMapPropagator(), [], set()
    for cause in causes:
        traceparent = cause.get(TRACEPARENT)
        if not traceparent or traceparent in seen:
            continue
        seen.add(traceparent)
        context = trace.get_current_span(propagator.extract({TRACEPARENT: traceparent})).get_span_context()
        if context.is_valid:
            links.append(trace.Link(context))
        if len(links) == MAX_LINKS:
            break
    return links


@contextlib.contextmanager
def work_span(name: str, causes: Iterable[Mapping[str, str]] = (),
              attributes: Mapping[str, str | int] | None = None) -> Iterator[object | None]:
    """A span for background work, current while the block runs (events it appends carry
    it): a trace of its own, linked to the spans that caused the work. Yields the span,
    or None when tracing is off (nothing is created)."""
    if _provider is None:
        yield None
        return
    from opentelemetry import context, trace

    tracer = trace.get_tracer(TRACER_NAME)
    with tracer.start_as_current_span(name, context=context.Context(), links=_links(causes),
                                      attributes=dict(attributes or {})) as span:
        yield span


def annotate(span: object | None, attributes: Mapping[str, str | int], failed: bool = False) -> None:
    """Adds what the work came to (a work_span's span; None when tracing is off: nothing)."""
    if span is None:
        return
    from opentelemetry.trace import Status, StatusCode

    span.set_attributes(dict(attributes))
    if failed:
        span.set_status(Status(StatusCode.ERROR))


def span_until(name: str, wait: Callable[[], None],
               outcome: Callable[[], tuple[Mapping[str, str | int], bool]]) -> None:
    """A child span of the current one for work running on threads of its own: it ends when
    `wait()` returns, with the attributes `outcome()` gives (and an error status when it says
    the work failed). Nothing happens when tracing is off."""
    if _provider is None:
        return
    from opentelemetry import trace

    span = trace.get_tracer(TRACER_NAME).start_span(name)

    def finish() -> None:
        try:
            wait()
            attributes, failed = outcome()
            annotate(span, attributes, failed)
        finally:
            span.end()
    threading.Thread(target=finish, name=f"trace-{name}", daemon=True).start()
