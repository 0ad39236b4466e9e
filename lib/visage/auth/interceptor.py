"""The one server interceptor every service installs (visage.server.build_server):
reflection and health stay open; every other RPC needs a verified token whose
role is at least the RPC's least role. The check runs in the handler's worker
thread (not gRPC's polling thread) and the identity stays set while the
servicer runs, including every step of a response stream. A refusal is answered by
visage.errors (its kind's status), here, since this interceptor may also run alone."""
from __future__ import annotations

import grpc

from visage import errors, nonblocking
from visage.auth import identity, roles
from visage.auth.tokens import AuthError, PermissionDenied, TokenVerifier, bearer_token

_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


class AuthInterceptor(grpc.ServerInterceptor):
    def __init__(self, verifier: TokenVerifier) -> None:
        self.verifier = verifier

    def authorize(self, method: str, metadata) -> identity.Identity:
        caller = self.verifier.verify(bearer_token(metadata))
        needed = roles.least_role(method)
        if caller.role < needed:
            raise PermissionDenied(f"{method.rsplit('/', 1)[-1]} needs the {needed.label} role; "
                                   f"{caller.subject} is {caller.role.label}")
        return caller

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or roles.is_open(method):
            return handler
        kind = next(k for k in _KINDS if getattr(handler, k) is not None)
        behavior = getattr(handler, kind)
        # A non-blocking stream (visage.nonblocking) yields nothing: its checked call is all there is.
        streams_out = kind.endswith("_stream") and not nonblocking.is_non_blocking(behavior)

        def checked(request, context, *send):
            try:
                caller = self.authorize(method, context.invocation_metadata())
            except AuthError as error:
                errors.answer(context, error)
            token = identity.set_current(caller)
            try:
                result = behavior(request, context, *send)
            finally:
                identity.reset_current(token)
            return _as(caller, result) if streams_out else result

        return handler._replace(**{kind: nonblocking.like(behavior, checked)})


def _as(caller: identity.Identity, responses):
    """Runs each step of a response stream with the caller's identity set (a
    generator's body runs only when gRPC asks for the next item)."""
    iterator = iter(responses)
    while True:
        token = identity.set_current(caller)
        try:
            item = next(iterator)
        except StopIteration:
            return
        finally:
            identity.reset_current(token)
        yield item
