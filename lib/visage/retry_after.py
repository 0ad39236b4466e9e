"""Waiting as the gateway asks: Envoy refuses an image call over a caller's rate limit
with RESOURCE_EXHAUSTED (REST: 429) and `retry-after: <seconds>` (visage_gateway.limits).

`retry_after_seconds(error)` reads that wait from a refused call; `HonourRetryAfter`
(installed on every channel visage.auth.client makes: the CLI's and visage.client's)
makes a unary call again after it, within the call's own deadline. A service's own
RESOURCE_EXHAUSTED (an image over the byte limit) carries no `retry-after`: never retried.
Streams cannot be replayed here: their callers retry them (`visage ingest` resends a batch)."""
from __future__ import annotations

import logging
import time

import grpc

RETRY_AFTER = "retry-after"
MAX_ATTEMPTS = 20  # a caller alone on its bucket gets through after one wait; others may share its address

log = logging.getLogger(__name__)


def retry_after_seconds(error: grpc.RpcError | grpc.Call) -> float | None:
    """The wait the gateway's rate limit asked for, or None when `error` is not a rate limit."""
    if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    for key, value in error.trailing_metadata() or ():
        if key == RETRY_AFTER:
            try:
                return max(float(value), 0.0)
            except ValueError:
                return None
    return None


class HonourRetryAfter(grpc.UnaryUnaryClientInterceptor):
    def intercept_unary_unary(self, continuation, details, request):
        deadline = None if details.timeout is None else time.monotonic() + details.timeout
        for _attempt in range(MAX_ATTEMPTS - 1):
            call = continuation(details, request)
            if call.exception() is None:
                return call
            wait = retry_after_seconds(call)
            if wait is None or (deadline is not None and time.monotonic() + wait >= deadline):
                return call
            log.info("%s: rate-limited by the gateway; trying again in %.0f s", details.method, wait)
            time.sleep(wait)
            if deadline is not None:
                details = _with_timeout(details, deadline - time.monotonic())
        return continuation(details, request)


def _with_timeout(details: grpc.ClientCallDetails, timeout: float) -> grpc.ClientCallDetails:
    """The same call with what is left of its deadline."""
    if hasattr(details, "_replace"):  # grpc's own details are a namedtuple
        return details._replace(timeout=timeout)
    return _Details(details.method, timeout, details.metadata, details.credentials,
                    getattr(details, "wait_for_ready", None), getattr(details, "compression", None))


class _Details(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression) -> None:
        self.method, self.timeout, self.metadata = method, timeout, metadata
        self.credentials, self.wait_for_ready, self.compression = credentials, wait_for_ready, compression
