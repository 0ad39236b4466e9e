"""The one mapping of errors to gRPC statuses, for every service.

Backends raise only the store's own errors (visage.store.base: StoreError and its
kinds); `store_status` says which status each kind is, and ErrorStatusInterceptor
(installed by visage.server.build_server) answers with it whenever a handler lets
one escape, so a store outage is UNAVAILABLE in every service, never UNKNOWN. A
request option above the caller's role (visage.auth.identity.RoleRequired) is
PERMISSION_DENIED the same way. Anything else a handler lets escape is a bug:
visage.guard answers INTERNAL with a short message.
"""
from __future__ import annotations

import functools
import logging

import grpc

from visage.auth.identity import RoleRequired
from visage.store.base import NotFound, StoreConflict, StoreCorrupt, StoreError, StoreUnavailable, Withdrawn

log = logging.getLogger(__name__)

STORE_STATUSES: dict[type[StoreError], grpc.StatusCode] = {
    NotFound: grpc.StatusCode.NOT_FOUND,
    Withdrawn: grpc.StatusCode.FAILED_PRECONDITION,
    StoreConflict: grpc.StatusCode.ABORTED,
    StoreUnavailable: grpc.StatusCode.UNAVAILABLE,
    StoreCorrupt: grpc.StatusCode.DATA_LOSS,
}


def store_status(error: StoreError, rpc_name: str = "") -> tuple[grpc.StatusCode, str]:
    """The status and message to answer a store error with (the most specific kind wins;
    a bare StoreError is the store's own failure: UNAVAILABLE, worth a retry)."""
    for kind in type(error).__mro__:
        code = STORE_STATUSES.get(kind)
        if code is not None:
            break
    else:
        code = grpc.StatusCode.UNAVAILABLE
    if code == grpc.StatusCode.UNAVAILABLE:
        log.warning("%s: store unavailable: %s", rpc_name or "store", error)
        return code, f"the store is unavailable ({error}); retry later"
    if code == grpc.StatusCode.DATA_LOSS:
        log.error("%s: stored data is inconsistent: %s", rpc_name or "store", error)
    return code, str(error)


def status_of(error: StoreError | RoleRequired, rpc_name: str = "") -> tuple[grpc.StatusCode, str]:
    if isinstance(error, RoleRequired):
        return grpc.StatusCode.PERMISSION_DENIED, str(error)
    return store_status(error, rpc_name)


class ErrorStatusInterceptor(grpc.ServerInterceptor):
    """Answers a StoreError or RoleRequired escaping any handler with status_of's status."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        name = handler_call_details.method.rsplit("/", 1)[-1]
        if handler.unary_unary:
            return handler._replace(unary_unary=_unary(handler.unary_unary, name))
        if handler.stream_unary:
            return handler._replace(stream_unary=_unary(handler.stream_unary, name))
        if handler.unary_stream:
            return handler._replace(unary_stream=_streaming(handler.unary_stream, name))
        if handler.stream_stream:
            return handler._replace(stream_stream=_streaming(handler.stream_stream, name))
        return handler


def _unary(behaviour, name: str):
    @functools.wraps(behaviour)
    def handle(request, context):
        try:
            return behaviour(request, context)
        except (StoreError, RoleRequired) as error:
            code, message = status_of(error, name)
        context.abort(code, message)
    return handle


def _streaming(behaviour, name: str):
    @functools.wraps(behaviour)
    def handle(request, context):
        try:
            yield from behaviour(request, context)
        except (StoreError, RoleRequired) as error:
            code, message = status_of(error, name)
        else:
            return
        context.abort(code, message)
    return handle
