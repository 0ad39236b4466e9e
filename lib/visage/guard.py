"""Server-side guards every Visage gRPC service runs (see build_server):

- Long-lived streams never starve unary calls or health. The sync gRPC server
  runs every call, a stream included, on a thread of its pool for the call's
  whole life (a non-blocking stream, visage.nonblocking - WatchEvents - only
  while it is called; its slot until it ends). `StreamGuard` caps open
  streaming calls (RESOURCE_EXHAUSTED beyond the cap) and `server_executor`
  sizes the pool as the cap plus the threads for unary calls, so unary calls
  and health always find a thread, however many idle watchers or client
  streams are open.
- Health and reflection are open to anyone, so they never take what
  authenticated work needs: health's Watch is answered without a thread of its
  own (grpc's non-blocking handler: no layer wraps health), and reflection
  streams have their own small budget (REFLECTION_STREAMS in all,
  REFLECTION_STREAMS_PER_CALLER per caller) beside the stream cap.
- The pool's threads beyond the unary ones end once idle (`ElasticThreadPool`),
  so opening and closing many streams leaves no threads behind.
- Each call's caller (visage.faces.fair.CALLER) is set for fair admission to
  the face workers.
- Bytes that are not a valid request message answer INVALID_ARGUMENT (gRPC
  itself answers INTERNAL), and an exception a handler did not map answers
  INTERNAL with a short message (gRPC itself answers UNKNOWN with the
  exception's text), logged with its traceback.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent import futures

import grpc

from visage import nonblocking
from visage.config import ServerSettings, env_name
from visage.faces.fair import CALLER

log = logging.getLogger(__name__)

MAX_STREAMS_ENV = env_name(ServerSettings, "max_streams")  # VISAGE_MAX_STREAMS
# Per service: 500 idle watchers + 100 client streams fit with room to spare.
DEFAULT_MAX_STREAMS = ServerSettings.max_streams


def max_streams_from_env(env: Mapping[str, str] | None = None) -> int:
    limit = ServerSettings.read("max_streams", env)  # "x": "VISAGE_MAX_STREAMS='x' is not a whole number"
    if limit < 1:
        raise ValueError(f"{MAX_STREAMS_ENV} must be at least 1, got {limit}")
    return limit


# Reflection (open to anyone) streams: their own budget, beside the stream cap.
REFLECTION_STREAMS = 16
REFLECTION_STREAMS_PER_CALLER = 4
REFLECTION_PREFIX = "/grpc.reflection."
HEALTH_PREFIX = "/grpc.health.v1.Health/"
# A thread beyond the unary ones that waited this long for work ends.
IDLE_THREAD_SECONDS = 2.0


def server_executor(unary_workers: int, max_streams: int, thread_name_prefix: str = "grpc") -> "ElasticThreadPool":
    """One thread per open stream (at most max_streams) and reflection stream
    (REFLECTION_STREAMS) plus unary_workers for everything else. Threads are
    created on demand and those beyond unary_workers end when idle, so idle
    capacity costs nothing."""
    return ElasticThreadPool(unary_workers + max_streams + REFLECTION_STREAMS, keep=unary_workers,
                             thread_name_prefix=thread_name_prefix)


class ElasticThreadPool(futures.Executor):
    """A thread pool (what grpc.server needs: submit) whose threads beyond
    `keep` end after IDLE_THREAD_SECONDS without work; concurrent.futures'
    pool keeps every thread it ever started (1,000 closed streams: 1,000 threads)."""

    def __init__(self, max_workers: int, keep: int = 0, idle_seconds: float = IDLE_THREAD_SECONDS,
                 thread_name_prefix: str = "pool") -> None:
        self.max_workers = max_workers
        self._keep = keep
        self._idle_seconds = idle_seconds
        self._prefix = thread_name_prefix
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)  # one token per thread waiting for work
        self._lock = threading.Lock()
        self._threads = 0
        self._started = 0
        self._shutdown = False

    def queue_depth(self) -> int:
        """Work submitted that no thread has taken yet."""
        return self._work.qsize()

    @property
    def threads(self) -> int:
        return self._threads

    def submit(self, fn, /, *args, **kwargs) -> futures.Future:
        future: futures.Future = futures.Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new work after shutdown")
            self._work.put((future, fn, args, kwargs))
            if not self._idle.acquire(blocking=False) and self._threads < self.max_workers:
                self._threads += 1
                self._started += 1
                threading.Thread(target=self._run, name=f"{self._prefix}_{self._started}", daemon=True).start()
        return future

    def _run(self) -> None:
        while True:
            try:
                item = self._work.get(timeout=self._idle_seconds)
            except queue.Empty:
                with self._lock:
                    # Leave only if no submit counted on this thread (took its idle token).
                    if (self._threads > self._keep or self._shutdown) and self._idle.acquire(blocking=False):
                        self._threads -= 1
                        return
                continue
            if item is None:
                with self._lock:
                    self._threads -= 1
                return
            future, fn, args, kwargs = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as error:  # noqa: BLE001 - handed to the future, as concurrent.futures does
                    future.set_exception(error)
            del item, future, fn, args, kwargs
            self._idle.release()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            threads = self._threads
        for _ in range(threads):
            self._work.put(None)


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


# The caller's address as the gateway verified it (its peer, or with VISAGE_GATEWAY_TRUSTED_HOPS
# the address a load balancer in front names), set by Envoy over whatever a client sent.
CALLER_HEADER = "x-visage-caller"


def caller_of(context: grpc.ServicerContext) -> str:
    """Who is calling, for fairness (not security): the address the gateway
    verified (CALLER_HEADER), else the peer's address without its port. Never
    X-Forwarded-For: its first entry is whatever the client wrote there."""
    for key, value in context.invocation_metadata() or ():
        if key == CALLER_HEADER and value:
            return value.strip()
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


def is_health(method: str) -> bool:
    """gRPC health: answered by grpc's own servicer, no thread per Watch; every
    layer (guard, metrics, errors, tracing) leaves it as it is."""
    return method.startswith(HEALTH_PREFIX)


class _ReflectionBudget:
    """Open reflection streams: at most `total`, at most `per_caller` per caller."""

    def __init__(self, total: int, per_caller: int) -> None:
        self.total, self.per_caller = total, per_caller
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}

    def take(self, caller: str) -> bool:
        with self._lock:
            if sum(self._open.values()) >= self.total or self._open.get(caller, 0) >= self.per_caller:
                return False
            self._open[caller] = self._open.get(caller, 0) + 1
            return True

    def give_back(self, caller: str) -> None:
        with self._lock:
            left = self._open.get(caller, 1) - 1
            if left:
                self._open[caller] = left
            else:
                self._open.pop(caller, None)


class StreamGuard(grpc.ServerInterceptor):
    """Caps open streaming calls, refuses unparseable requests, and maps
    unexpected exceptions to INTERNAL (see the module docstring)."""

    def __init__(self, max_streams: int, reflection_streams: int = REFLECTION_STREAMS,
                 reflection_per_caller: int = REFLECTION_STREAMS_PER_CALLER) -> None:
        self.max_streams = max_streams
        self._slots = threading.BoundedSemaphore(max_streams)
        self._reflection = _ReflectionBudget(reflection_streams, reflection_per_caller)

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if is_health(method):
            return handler
        deserialize = _guarded_deserializer(handler.request_deserializer)
        serialize = handler.response_serializer
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(self._unary(handler.unary_unary, method), deserialize, serialize)
        if nonblocking.is_non_blocking(handler.unary_stream):
            return grpc.unary_stream_rpc_method_handler(
                self._non_blocking_stream(handler.unary_stream, method), deserialize, serialize)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._response_stream(handler.unary_stream, method, _check), deserialize, serialize)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._request_stream(handler.stream_unary, method), deserialize, serialize)
        return grpc.stream_stream_rpc_method_handler(
            self._response_stream(handler.stream_stream, method, _checked_iterator), deserialize, serialize)

    def _acquire(self, context: grpc.ServicerContext, method: str) -> Callable[[], None]:
        """Takes the stream's slot (reflection: from its own budget); returns what gives it back."""
        if method.startswith(REFLECTION_PREFIX):
            caller = caller_of(context)
            if not self._reflection.take(caller):
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"too many open reflection streams (limit {self._reflection.per_caller} per caller, "
                              f"{self._reflection.total} in all); close one and retry")
            return lambda: self._reflection.give_back(caller)
        if not self._slots.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"too many open streams on this service (limit {self.max_streams}); retry later")
        return self._slots.release

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
            release = self._acquire(context, method)
            CALLER.set(caller_of(context))
            try:
                return behavior(_checked_iterator(requests, context), context)
            except Exception as error:  # noqa: BLE001
                _abort_unexpected(error, method, context)
            finally:
                release()
        return call

    def _non_blocking_stream(self, behavior, method: str):
        """A stream answered without a thread of its own (visage.nonblocking): its
        slot is given back when the call ends, not when the behaviour returns."""
        def call(request, context, send):
            release = self._acquire(context, method)
            CALLER.set(caller_of(context))
            try:
                behavior(_check(request, context), context, send)
            except Exception as error:  # noqa: BLE001
                release()
                _abort_unexpected(error, method, context)
            nonblocking.on_end(context, release)
        return nonblocking.mark(call)

    def _response_stream(self, behavior, method: str, check_requests):
        def call(request_or_iterator, context):
            release = self._acquire(context, method)
            CALLER.set(caller_of(context))
            try:
                yield from behavior(check_requests(request_or_iterator, context), context)
            except Exception as error:  # noqa: BLE001
                _abort_unexpected(error, method, context)
            finally:
                release()
        return call
