"""Server-side guards every Visage gRPC service runs (see build_server):

- Long-lived streams never starve unary calls or health. The sync gRPC server
  runs every call, a stream included, on a thread of its pool for the call's
  whole life. `StreamGuard` caps open streaming calls (RESOURCE_EXHAUSTED
  beyond the cap) and `server_executor` sizes the pool as the cap plus the
  threads for unary calls, so unary calls and health always find a thread,
  however many idle watchers or client streams are open.
- Each call's caller (visage.faces.fair.CALLER) is set for fair admission to
  the face workers.
- Bytes that are not a valid request message answer INVALID_ARGUMENT (gRPC
  itself answers INTERNAL), and an exception a handler did not map answers
  INTERNAL with a short message (gRPC itself answers UNKNOWN with the
  exception's text), logged with its traceback.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc

from visage.faces.fair import CALLER

log = logging.getLogger(__name__)

MAX_STREAMS_ENV = "VISAGE_MAX_STREAMS"
DEFAULT_MAX_STREAMS = 1000  # per service: 500 idle watchers + 100 client streams fit with room to spare


def max_streams_from_env(env: dict[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    value = env.get(MAX_STREAMS_ENV, str(DEFAULT_MAX_STREAMS))
    try:
        limit = int(value)
    except ValueError:
        raise ValueError(f"{MAX_STREAMS_ENV}={value!r} is not a whole number") from None
    if limit < 1:
        raise ValueError(f"{MAX_STREAMS_ENV} must be at least 1, got {limit}")
    return limit


def server_executor(unary_workers: int, max_streams: int) -> futures.ThreadPoolExecutor:
    """One thread per open stream (at most max_streams) plus unary_workers for
    everything else. Threads are created on demand, so idle capacity costs nothing."""
    return futures.ThreadPoolExecutor(max_workers=unary_workers + max_streams, thread_name_prefix="grpc")


class _BadRequest:
    """What the guarded deserializer returns for bytes that do not parse."""

    def __init__(self, type_name: str, error: Exception) -> None:
        self.message = f"the request is not a valid {type_name} message ({type(error).__name__})"


def _guarded_deserializer(deserialize: Callable[[bytes], object] | None) -> Callable[[bytes], object] | None:
    if deserialize is None:
        return None
    type_name = getattr(getattr(deserialize, "__self__", None), "DESCRIPTOR", None)
    type_name = type_name.full_name if type_name is not None else "request"

    def parse(data: bytes):
        try:
            return deserialize(data)
        except Exception as error:  # noqa: BLE001 - any parse failure is the caller's bad bytes
            return _BadRequest(type_name, error)
    return parse


def caller_of(context: grpc.ServicerContext) -> str:
    """Who is calling, for fairness (not security): the client address Envoy
    put first in x-forwarded-for, else the peer's address without its port."""
    for key, value in context.invocation_metadata() or ():
        if key == "x-forwarded-for" and value:
            return value.split(",")[0].strip()
    peer = context.peer() or ""
    return peer.rsplit(":", 1)[0] if peer.count(":") > 1 else peer


def _check(request, context: grpc.ServicerContext):
    if isinstance(request, _BadRequest):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
    return request


def _checked_iterator(requests: Iterator, context: grpc.ServicerContext) -> Iterator:
    for request in requests:
        yield _check(request, context)


def _abort_unexpected(error: Exception, method: str, context: grpc.ServicerContext) -> None:
    """Re-raises what context.abort raised (the status is already set); anything
    else is a bug: INTERNAL with a short message, the traceback in the log."""
    if context.code() is not None and context.code() != grpc.StatusCode.OK:
        raise error
    log.exception("%s failed", method, exc_info=error)
    context.abort(grpc.StatusCode.INTERNAL,
                  f"{method.rsplit('/', 1)[-1]} failed with an internal error ({type(error).__name__}); see the service log")


class StreamGuard(grpc.ServerInterceptor):
    """Caps open streaming calls, refuses unparseable requests, and maps
    unexpected exceptions to INTERNAL (see the module docstring)."""

    def __init__(self, max_streams: int) -> None:
        self.max_streams = max_streams
        self._slots = threading.BoundedSemaphore(max_streams)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        deserialize = _guarded_deserializer(handler.request_deserializer)
        serialize = handler.response_serializer
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(self._unary(handler.unary_unary, method), deserialize, serialize)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._response_stream(handler.unary_stream, method, _check), deserialize, serialize)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._request_stream(handler.stream_unary, method), deserialize, serialize)
        return grpc.stream_stream_rpc_method_handler(
            self._response_stream(handler.stream_stream, method, _checked_iterator), deserialize, serialize)

    def _acquire(self, context: grpc.ServicerContext) -> None:
        if not self._slots.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"too many open streams on this service (limit {self.max_streams}); retry later")

    @staticmethod
    def _unary(behavior, method: str):
        def call(request, context):
            request = _check(request, context)
            CALLER.set(caller_of(context))
            try:
                return behavior(request, context)
            except Exception as error:  # noqa: BLE001
                _abort_unexpected(error, method, context)
        return call

    def _request_stream(self, behavior, method: str):
        def call(requests, context):
            self._acquire(context)
            CALLER.set(caller_of(context))
            try:
                return behavior(_checked_iterator(requests, context), context)
            except Exception as error:  # noqa: BLE001
                _abort_unexpected(error, method, context)
            finally:
                self._slots.release()
        return call

    def _response_stream(self, behavior, method: str, check_requests):
        def call(request_or_iterator, context):
            self._acquire(context)
            CALLER.set(caller_of(context))
            try:
                yield from behavior(check_requests(request_or_iterator, context), context)
            except Exception as error:  # noqa: BLE001
                _abort_unexpected(error, method, context)
            finally:
                self._slots.release()
        return call
