"""Hostile but cheap input gets a documented 4xx / gRPC status with a short
message, never 500/UNKNOWN/INTERNAL, over gRPC and over REST through the real
Envoy; REST errors have one shape whoever answers (a service or Envoy)."""
from __future__ import annotations

import base64
import http.client
import io
import json
import os
import struct
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from PIL import Image

from visage.config import Config
from visage.faces.pipeline import InvalidImage
from visage.faces.pool import PipelinePool
from visage.faces.settings import FaceSettings
from visage.mesh import start_in_process
from visage.paging import encode_token
from visage.store import open_store
from visage.v1 import classify_pb2, classify_pb2_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))
from gateway_stack import start_gateway  # noqa: E402

ANSWER_SECONDS = 60


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def ico_wrapping(png: bytes) -> bytes:
    """An ICO whose one entry is a PNG (the directory says 256x256, as it must)."""
    header = struct.pack("<HHH", 0, 1, 1)
    entry = struct.pack("<BBBBHHII", 0, 0, 0, 0, 1, 32, len(png), 6 + 16)
    return header + entry + png


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    config = Config(data_dir=tmp_path_factory.mktemp("hostile"), workers=1)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(config)
    with start_in_process(config, store) as services:
        gateway = start_gateway(services.ports, tmp_path_factory.mktemp("hostile-gateway"),
                                {"VISAGE_GATEWAY_IMAGE_CALLS_PER_SECOND": "1", "VISAGE_GATEWAY_IMAGE_CALLS_BURST": "2"})
        try:
            yield services, gateway
        finally:
            gateway.stop()
    store.close()


@pytest.fixture(scope="module")
def classify(stack):
    services, _ = stack
    channel = grpc.insecure_channel(f"127.0.0.1:{services.ports['classifier']}",
                                    options=[("grpc.max_send_message_length", 64 << 20)])
    stub = classify_pb2_grpc.ClassifyServiceStub(channel)

    def call(content: bytes) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as error:
            stub.Classify(classify_pb2.ClassifyRequest(content=content), timeout=ANSWER_SECONDS)
        return error.value
    yield call
    channel.close()


def rest(gateway, method: str, path: str, body: bytes | None = None, source: str = "127.0.0.1") -> tuple[int, dict]:
    """One REST call from `source` (any 127.x address reaches the loopback gateway)."""
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=ANSWER_SECONDS,
                                            source_address=(source, 0))
    try:
        headers = {"authorization": f"Bearer {os.environ['VISAGE_TOKEN']}",  # the session's admin (tests/conftest.py)
                   **({"content-type": "application/json"} if body else {})}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()


def classify_body(content: bytes) -> bytes:
    return json.dumps({"content": base64.b64encode(content).decode()}).encode()


# ---- images over gRPC ---------------------------------------------------------
def test_tiff_is_refused_naming_the_accepted_formats(classify, faces_dir):
    tiff = encode(Image.open(faces_dir / "scenes" / "bbt1.jpg"), "TIFF")
    error = classify(tiff)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "TIFF images are not accepted; send JPEG, PNG, WebP, BMP or GIF"


def test_an_ico_wrapping_a_huge_png_is_refused_from_its_header(classify):
    bomb = ico_wrapping(encode(Image.new("1", (8000, 8000)), "PNG"))
    error = classify(bomb)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "ICO images are not accepted" in error.details()


def test_a_40000x1_png_is_a_clear_invalid_argument(classify):
    error = classify(encode(Image.new("RGB", (40000, 1), (10, 20, 30)), "PNG"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "40000x1" in error.details() and "at least" in error.details()


def test_the_configured_pixel_limit_refuses_before_decoding_and_says_the_limit():
    pool = PipelinePool(Config(workers=1), FaceSettings(max_pixels=2_000_000))
    try:
        with pytest.raises(InvalidImage, match=r"2000x1001 = 2,002,000 pixels; the limit is 2,000,000"):
            pool.analyze(encode(Image.new("L", (2000, 1001)), "PNG"))
    finally:
        pool.close()


def test_bytes_that_are_no_request_message_are_invalid_argument(stack):
    services, _ = stack
    with grpc.insecure_channel(f"127.0.0.1:{services.ports['query']}") as channel:
        raw = channel.unary_unary("/visage.v1.QueryService/GetPersona")
        with pytest.raises(grpc.RpcError) as error:
            raw(b"\x0a\x02\xff\xfe", timeout=ANSWER_SECONDS)  # field 1 (a string) holding invalid UTF-8
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "GetPersonaRequest" in error.value.details()


# ---- REST through Envoy ----------------------------------------------------------
def assert_error_shape(body: dict, grpc_code: int) -> None:
    assert set(body) == {"code", "message", "details"}, body
    assert body["code"] == grpc_code and body["message"] and isinstance(body["details"], list), body


def test_percent_ff_in_a_path_parameter_is_400(stack):
    status, body = rest(stack[1], "GET", "/v1/personas/%FF")
    assert status == 400
    assert_error_shape(body, 3)


@pytest.mark.parametrize("path, scope, length", [
    ("/v1/images", "images", 1), ("/v1/trainingJobs", "jobs", 1), ("/v1/modelVersions", "versions", 1),
    ("/v1/faces:unknown", "unknown-faces", 2)])
def test_a_page_token_beyond_64_bits_is_400(stack, path, scope, length):
    token = encode_token(scope, [2**63] * length)
    status, body = rest(stack[1], "GET", f"{path}?pageToken={token}")
    assert status == 400, body
    assert_error_shape(body, 3)


def test_an_image_over_the_byte_limit_is_413(stack):
    over = b"\xff\xd8\xff" + bytes(20 * 1024 * 1024)
    status, body = rest(stack[1], "POST", "/v1/images:classify", classify_body(over), source="127.0.0.4")
    assert status == 413
    assert_error_shape(body, 8)
    assert "the limit is 20,971,520 bytes" in body["message"]


def test_envoy_and_service_errors_have_one_shape(stack):
    gateway = stack[1]
    service_error = rest(gateway, "GET", "/v1/personas/no-such-persona")  # the query service answers
    unknown_path = rest(gateway, "GET", "/v1/no-such-thing")  # Envoy answers
    malformed = rest(gateway, "POST", "/v1/personas", b'{"displayName": ')  # the transcoder answers
    assert service_error[0] == 404 and unknown_path[0] == 404 and malformed[0] == 400
    assert_error_shape(service_error[1], 5)
    assert_error_shape(unknown_path[1], 5)
    assert_error_shape(malformed[1], 3)


def test_one_caller_sending_images_fast_is_limited_and_another_is_not(stack):
    """The image routes have a token bucket per caller address (here 1/s, burst 2)."""
    gateway = stack[1]
    not_an_image = classify_body(b"not an image")
    with ThreadPoolExecutor(max_workers=12) as threads:  # at once: well within one refill
        statuses = list(threads.map(lambda _: rest(gateway, "POST", "/v1/images:classify", not_an_image,
                                                   source="127.0.0.2"), range(12)))
    limited = [body for status, body in statuses if status == 429]
    assert limited, statuses  # 12 calls cannot all fit in a burst of 2 plus one a second
    assert_error_shape(limited[0], 8)
    status, body = rest(gateway, "POST", "/v1/images:classify", not_an_image, source="127.0.0.3")
    assert status == 400 and "not an image" in body["message"]  # the other caller reached the classifier


@pytest.mark.parametrize("path, body, source", [
    ("/v1/faces:verify", {"face": {"faceId": "no-such-face"}, "personaId": "no-such-persona"}, "127.0.0.4"),
    ("/v1/faces:findSimilar", {"faceId": "no-such-face"}, "127.0.0.5"),
])
def test_verify_and_find_similar_are_limited_like_the_image_routes(stack, path, body, source):
    """VerifyFaces and FindSimilarFaces (issue 29) share the image routes' per-caller bucket."""
    gateway = stack[1]
    payload = json.dumps(body).encode()
    with ThreadPoolExecutor(max_workers=12) as threads:
        statuses = list(threads.map(lambda _: rest(gateway, "POST", path, payload, source=source), range(12)))
    assert any(status == 429 for status, _ in statuses), statuses
    assert {status for status, _ in statuses} <= {429, 404}  # the others reached the classifier: not found
