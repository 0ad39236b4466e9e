"""The one mapping of errors to gRPC statuses, for every service.

An exception kind is registered once with its status (`register_status`), and
ErrorStatusInterceptor (installed by visage.server.build_server for every service)
answers with that status whenever a handler lets the kind escape, mid-stream
included; the message is the error's text, and the most specific registered class
in the error's MRO wins. This module registers the store's kinds (visage.store.base:
a store outage is UNAVAILABLE in every service, never UNKNOWN), a request option
above the caller's role (RoleRequired: PERMISSION_DENIED) and a bad page size or
token (visage.paging.InvalidPageRequest: INVALID_ARGUMENT). A service registers its
own kinds when its server module is imported (this library never imports a service).
Anything unregistered a handler lets escape is a bug: visage.guard answers INTERNAL
with a short message.
"""
from __future__ import annotations

import functools
import logging

import grpc

from visage.auth.identity import RoleRequired
from visage.paging import InvalidPageRequest
from visage.store.base import NotFound, StoreConflict, StoreCorrupt, StoreError, StoreUnavailable, Withdrawn

log = logging.getLogger(__name__)

_STATUSES: dict[type[Exception], grpc.StatusCode] = {}


def register_status(kind: type[Exception], code: grpc.StatusCode) -> None:
    """Answers `kind` escaping any handler with `code` (its subclasses too, unless
    registered themselves). Only a project's own kinds: a builtin such as ValueError
    would turn bugs into client errors."""
    if not (isinstance(kind, type) and issubclass(kind, Exception)) or kind.__module__ == "builtins":
        raise TypeError(f"register an exception class of your own, not {kind!r}")
    if code == grpc.StatusCode.OK:
        raise ValueError(f"{kind.__name__} cannot be answered with OK")
    if _STATUSES.setdefault(kind, code) != code:
        raise ValueError(f"{kind.__name__} is already answered with {_STATUSES[kind].name}, not {code.name}")


def registered_status(error: BaseException) -> grpc.StatusCode | None:
    """The status of the most specific registered kind `error` is (None: none)."""
    for kind in type(error).__mro__:
        code = _STATUSES.get(kind)
        if code is not None:
            return code
    return None


def status_of(error: BaseException, rpc_name: str = "") -> tuple[grpc.StatusCode, str] | None:
    """The status and message to answer `error` with; None when its kind is not registered."""
    code = registered_status(error)
    if code is None:
        return None
    if isinstance(error, StoreError):
        return _store_answer(error, code, rpc_name)
    return code, str(error)


def store_status(error: StoreError, rpc_name: str = "") -> tuple[grpc.StatusCode, str]:
    """The status and message of a store error, e.g. for one item of a stream that goes on
    (a bare StoreError is the store's own failure: UNAVAILABLE, worth a retry)."""
    return _store_answer(error, registered_status(error), rpc_name)


def _store_answer(error: StoreError, code: grpc.StatusCode, rpc_name: str) -> tuple[grpc.StatusCode, str]:
    """An outage says so and asks for a retry; inconsistent stored data is logged as an error."""
    if code == grpc.StatusCode.UNAVAILABLE:
        log.warning("%s: store unavailable: %s", rpc_name or "store", error)
        return code, f"the store is unavailable ({error}); retry later"
    if code == grpc.StatusCode.DATA_LOSS:
        log.error("%s: stored data is inconsistent: %s", rpc_name or "store", error)
    return code, str(error)


for _kind, _code in [
    (StoreError, grpc.StatusCode.UNAVAILABLE),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Withdrawn, grpc.StatusCode.FAILED_PRECONDITION),
    (StoreConflict, grpc.StatusCode.ABORTED),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (StoreCorrupt, grpc.StatusCode.DATA_LOSS),
    (RoleRequired, grpc.StatusCode.PERMISSION_DENIED),
    (InvalidPageRequest, grpc.StatusCode.INVALID_ARGUMENT),
]:
    register_status(_kind, _code)


class ErrorStatusInterceptor(grpc.ServerInterceptor):
    """Answers a registered kind escaping any handler with status_of's status; the
    rest (and context.abort's own exception) goes on unchanged."""

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
        except Exception as error:  # noqa: BLE001 - unregistered kinds are re-raised as they are
            answer = status_of(error, name)
            if answer is None:
                raise
        context.abort(*answer)
    return handle


def _streaming(behaviour, name: str):
    @functools.wraps(behaviour)
    def handle(request, context):
        try:
            yield from behaviour(request, context)
        except Exception as error:  # noqa: BLE001 - unregistered kinds are re-raised as they are
            answer = status_of(error, name)
            if answer is None:
                raise
        else:
            return
        context.abort(*answer)
    return handle
