"""The one path from an error to a gRPC status, for every service and interceptor.

The code that finds a problem raises an exception. Its kind is registered here once
with its gRPC status (`register_status`) and, where the REST status Envoy derives from
that code would be wrong, with an HTTP status (ImageTooLarge: 413, not 429), which
the gateway reads from the STATUS_HINT_HEADER trailer (visage_gateway.limits).
`answer` is the one place a registered kind becomes a status (its message: the
error's text; the most specific registered class in the error's MRO wins). It runs:
- around every handler a server runs (ErrorStatusInterceptor, installed by
  visage.server.build_server), mid-stream included;
- around every RPC of a servicer class marked `@answer_errors`, so that a servicer
  answers alike however it is mounted (a bare grpc.server, or called directly);
- for an auth refusal (visage.auth.interceptor, which also runs on its own);
- for one failed item of a stream that goes on (`item_status`: IngestImages, ClassifyStream).
This module registers the library's kinds: the store's (a store outage is UNAVAILABLE,
never UNKNOWN), auth refusals, a request option above the caller's role, bad page
requests, face-analysis failures and InvalidArgument. A service registers its own
kinds when its server module is imported (this library never imports a service).
Anything unregistered a handler lets escape is a bug: visage.guard answers INTERNAL
with a short message. Only this module and visage.guard put statuses on a context
(tests/errors/test_one_error_path.py checks it).
"""
from __future__ import annotations

import functools
import inspect
import logging
from typing import NoReturn

import grpc

from visage import nonblocking
from visage.auth.identity import RoleRequired
from visage.auth.tokens import IssuerUnavailable, PermissionDenied, Unauthenticated
from visage.faces.detectors import DetectorUnavailable
from visage.faces.pipeline import ImageTooLarge, InvalidImage, NotAFace
from visage.faces.pool import WorkerCrashed
from visage.paging import InvalidPageRequest
from visage.store.base import (
    AlreadyExists,
    NotFound,
    StoreConflict,
    StoreCorrupt,
    StoreError,
    StoreUnavailable,
    Withdrawn,
)

log = logging.getLogger(__name__)

# Trailing metadata by which a service asks the gateway for a REST status that no
# gRPC code maps to (413 for an image over the byte limit); see visage_gateway.limits.
STATUS_HINT_HEADER = "x-visage-http-status"


class InvalidArgument(ValueError):
    """A request field the caller must fix (→ INVALID_ARGUMENT); the text says which and why."""


_KINDS: dict[type[Exception], tuple[grpc.StatusCode, int | None]] = {}


def register_status(kind: type[Exception], code: grpc.StatusCode, http_status: int | None = None) -> None:
    """Answers `kind` escaping any handler with `code` (its subclasses too, unless
    registered themselves), and REST with `http_status` (a 4xx) where the gateway's
    mapping of `code` would be wrong. Only a project's own kinds: a builtin such as
    ValueError would turn bugs into client errors."""
    if not (isinstance(kind, type) and issubclass(kind, Exception)) or kind.__module__ == "builtins":
        raise TypeError(f"register an exception class of your own, not {kind!r}")
    if code == grpc.StatusCode.OK:
        raise ValueError(f"{kind.__name__} cannot be answered with OK")
    if http_status is not None and not 400 <= http_status <= 499:
        raise ValueError(f"the gateway honours 4xx hints only, not {http_status}")
    if _KINDS.setdefault(kind, (code, http_status)) != (code, http_status):
        raise ValueError(f"{kind.__name__} is already answered with {_describe(*_KINDS[kind])}, "
                         f"not {_describe(code, http_status)}")


def _describe(code: grpc.StatusCode, http_status: int | None) -> str:
    return code.name if http_status is None else f"{code.name} (HTTP {http_status})"


def _registered(kind: type[BaseException]) -> tuple[grpc.StatusCode, int | None] | None:
    """The status and HTTP status of the most specific registered class in `kind`'s MRO."""
    return next((_KINDS[base] for base in kind.__mro__ if base in _KINDS), None)


def registered_status(kind: type[BaseException]) -> grpc.StatusCode | None:
    """The status `kind` is answered with (None: not registered, a bug if it reaches a caller)."""
    registered = _registered(kind)
    return registered[0] if registered else None


def status_of(error: BaseException, rpc_name: str = "") -> tuple[grpc.StatusCode, str] | None:
    """The status and message to answer `error` with; None when its kind is not registered."""
    code = registered_status(type(error))
    if code is None:
        return None
    if isinstance(error, StoreError):
        return _store_answer(error, code, rpc_name)
    return code, str(error)


def _store_answer(error: StoreError, code: grpc.StatusCode, rpc_name: str) -> tuple[grpc.StatusCode, str]:
    """An outage says so and asks for a retry; inconsistent stored data is logged as an error."""
    if code == grpc.StatusCode.UNAVAILABLE:
        log.warning("%s: store unavailable: %s", rpc_name or "store", error)
        return code, f"the store is unavailable ({error}); retry later"
    if code == grpc.StatusCode.DATA_LOSS:
        log.error("%s: stored data is inconsistent: %s", rpc_name or "store", error)
    return code, str(error)


def answer(context: grpc.ServicerContext, error: Exception, rpc_name: str = "") -> NoReturn:
    """Ends the call with `error`'s status (and its HTTP status hint, if any). An
    unregistered kind is re-raised as it is, for visage.guard to answer as a bug."""
    answered = status_of(error, rpc_name)
    if answered is None:
        raise error
    _send_status_hint(context, error)
    context.abort(*answered)


def _send_status_hint(context: grpc.ServicerContext, error: Exception) -> None:
    """The HTTP status a registered kind asks for, if any (trailing metadata the gateway reads)."""
    if (http_status := _registered(type(error))[1]) is not None:
        context.set_trailing_metadata(((STATUS_HINT_HEADER, str(http_status)),))


def end_stream(context: grpc.ServicerContext, send, error: Exception | None, rpc_name: str) -> None:
    """Ends a non-blocking response stream (visage.nonblocking) with OK (no error) or `error`'s
    status, as `answer` would have; an unregistered kind is a bug: INTERNAL, as visage.guard answers it."""
    if error is None:
        answered = (grpc.StatusCode.OK, "")
    elif (answered := status_of(error, rpc_name)) is None:
        log.error("%s failed", rpc_name, exc_info=error)
        answered = (grpc.StatusCode.INTERNAL,
                    f"{rpc_name} failed with an internal error ({type(error).__name__}); see the service log")
    else:
        _send_status_hint(context, error)
    context.set_code(answered[0])
    context.set_details(answered[1])
    send(None)


def item_status(error: Exception, what: str) -> tuple[grpc.StatusCode, str]:
    """The status of one failed item of a stream that goes on (`what` names it in the log):
    its registered kind's, else INTERNAL (a bug, logged with its traceback)."""
    answered = status_of(error, what)
    if answered is None:
        log.error("%s failed", what, exc_info=error)
        return grpc.StatusCode.INTERNAL, f"internal error: {error}"
    return answered


for _kind, _code in [
    (StoreError, grpc.StatusCode.UNAVAILABLE),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (Withdrawn, grpc.StatusCode.FAILED_PRECONDITION),
    (StoreConflict, grpc.StatusCode.ABORTED),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (StoreCorrupt, grpc.StatusCode.DATA_LOSS),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (IssuerUnavailable, grpc.StatusCode.UNAVAILABLE),  # the token cannot be judged yet: retry
    (RoleRequired, grpc.StatusCode.PERMISSION_DENIED),
    (InvalidPageRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (InvalidImage, grpc.StatusCode.INVALID_ARGUMENT),
    (NotAFace, grpc.StatusCode.INVALID_ARGUMENT),
    (DetectorUnavailable, grpc.StatusCode.UNAVAILABLE),  # a remote detector (Azure) is down: the caller may retry
    (WorkerCrashed, grpc.StatusCode.INTERNAL),
]:
    register_status(_kind, _code)
register_status(ImageTooLarge, grpc.StatusCode.RESOURCE_EXHAUSTED, http_status=413)  # REST: not 429


class ErrorStatusInterceptor(grpc.ServerInterceptor):
    """Answers a registered kind escaping any handler (see `answer`); the rest (and
    context.abort's own exception) goes on unchanged."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        # Health is grpc's own servicer (raises nothing of ours; its Watch must stay non-blocking).
        if handler is None or handler_call_details.method.startswith("/grpc.health.v1.Health/"):
            return handler
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


def answer_errors(servicer_class: type) -> type:
    """Class decorator: each RPC the servicer implements (a method its generated base
    declares) answers registered kinds as ErrorStatusInterceptor does, wherever the
    servicer is mounted. Response streams are generator functions (checked by
    tests/errors/test_one_error_path.py)."""
    rpcs = {name for base in servicer_class.__mro__[1:] for name in vars(base) if not name.startswith("_")}
    for name, method in list(vars(servicer_class).items()):
        if name in rpcs and inspect.isfunction(method):
            wrap = _streaming if inspect.isgeneratorfunction(method) else _unary
            setattr(servicer_class, name, wrap(method, name))
    return servicer_class


# The context is a behaviour's last argument (after `self` for a servicer's method).
def _unary(behaviour, name: str):
    @functools.wraps(behaviour)
    def handle(*args):
        try:
            return behaviour(*args)
        except Exception as error:  # noqa: BLE001 - answer() re-raises unregistered kinds as they are
            failure = error
        answer(nonblocking.context_of(behaviour, args), failure, name)  # outside the except: nothing to chain
    return handle


def _streaming(behaviour, name: str):
    if nonblocking.is_non_blocking(behaviour):  # returns at once: answered as a unary call is
        return _unary(behaviour, name)

    @functools.wraps(behaviour)
    def handle(*args):
        try:
            yield from behaviour(*args)
            return
        except Exception as error:  # noqa: BLE001 - answer() re-raises unregistered kinds as they are
            failure = error
        answer(args[-1], failure, name)
    return handle
