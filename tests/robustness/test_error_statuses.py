"""visage.errors' one registry of exception kinds and their gRPC statuses: a
registered kind escaping a handler (unary or mid-stream) is answered with its
status and its text, the most specific registered class wins, and anything
unregistered goes on unchanged to visage.guard (INTERNAL), never swallowed."""
from __future__ import annotations

from concurrent import futures

import grpc
import pytest

from visage import guard
from visage.errors import ErrorStatusInterceptor, register_status, status_of
from visage.server import SERVER_OPTIONS
from visage.store.base import StoreUnavailable


class Refused(Exception):
    pass


class RefusedTwice(Refused):  # registered itself: its own status
    pass


class RefusedThrice(RefusedTwice):  # not registered: its nearest registered base's
    pass


class Unregistered(Exception):
    pass


register_status(Refused, grpc.StatusCode.FAILED_PRECONDITION)
register_status(RefusedTwice, grpc.StatusCode.ALREADY_EXISTS)

ERRORS = {"refused": Refused("refused: the first"), "twice": RefusedTwice("refused: the second"),
          "thrice": RefusedThrice("refused: the third"), "unregistered": Unregistered("a bug"),
          "store-down": StoreUnavailable("connection refused")}


def raise_named(request: bytes, context):
    raise ERRORS[request.decode()]


def stream_then_raise(request: bytes, context):
    yield b"first"
    yield b"second"
    raise ERRORS[request.decode()]


@pytest.fixture(scope="module")
def call():
    """The chain's order as visage.server builds it: the guard outside, error statuses inside."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=SERVER_OPTIONS,
                         interceptors=[guard.StreamGuard(4), ErrorStatusInterceptor()])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Errors", {
        "Unary": grpc.unary_unary_rpc_method_handler(raise_named),
        "Stream": grpc.unary_stream_rpc_method_handler(stream_then_raise),
    })])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield {"unary": channel.unary_unary("/test.Errors/Unary"), "stream": channel.unary_stream("/test.Errors/Stream")}
    channel.close()
    server.stop(0)


def unary_error(call, name: str) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call["unary"](name.encode(), timeout=30)
    return raised.value


def stream_error(call, name: str) -> tuple[list[bytes], grpc.RpcError]:
    received = []
    with pytest.raises(grpc.RpcError) as raised:
        for item in call["stream"](name.encode(), timeout=30):
            received.append(item)
    return received, raised.value


@pytest.mark.parametrize("name, code", [("refused", grpc.StatusCode.FAILED_PRECONDITION),
                                        ("twice", grpc.StatusCode.ALREADY_EXISTS),
                                        ("thrice", grpc.StatusCode.ALREADY_EXISTS)])
def test_a_registered_kind_escaping_a_unary_handler_gets_its_most_specific_status(call, name, code):
    error = unary_error(call, name)
    assert (error.code(), error.details()) == (code, str(ERRORS[name]))


@pytest.mark.parametrize("name, code", [("refused", grpc.StatusCode.FAILED_PRECONDITION),
                                        ("thrice", grpc.StatusCode.ALREADY_EXISTS)])
def test_a_registered_kind_raised_mid_stream_ends_the_stream_with_its_status(call, name, code):
    received, error = stream_error(call, name)
    assert received == [b"first", b"second"]
    assert (error.code(), error.details()) == (code, str(ERRORS[name]))


def test_a_store_outage_says_retry_in_both_kinds_of_call(call):
    for error in (unary_error(call, "store-down"), stream_error(call, "store-down")[1]):
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        assert error.details() == "the store is unavailable (connection refused); retry later"


def test_an_unregistered_exception_goes_on_to_the_guard_as_a_bug(call):
    assert status_of(Unregistered("a bug")) is None
    for error in (unary_error(call, "unregistered"), stream_error(call, "unregistered")[1]):
        assert error.code() == grpc.StatusCode.INTERNAL
        assert "internal error (Unregistered)" in error.details()  # the guard saw the original kind


def test_registering_refuses_builtins_ok_and_a_second_status():
    with pytest.raises(TypeError):
        register_status(ValueError, grpc.StatusCode.INVALID_ARGUMENT)  # would turn bugs into client errors
    with pytest.raises(ValueError):
        register_status(Unregistered, grpc.StatusCode.OK)
    with pytest.raises(ValueError, match="already answered with ALREADY_EXISTS"):
        register_status(RefusedTwice, grpc.StatusCode.NOT_FOUND)
    register_status(RefusedTwice, grpc.StatusCode.ALREADY_EXISTS)  # the same again (a module re-imported): fine
    assert status_of(RefusedTwice("x")) == (grpc.StatusCode.ALREADY_EXISTS, "x")
