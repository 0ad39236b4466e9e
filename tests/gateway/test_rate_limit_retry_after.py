"""The gateway's rate limit on image calls tells a caller when to try again (issue 28): a 429
carries `retry-after`, a refused gRPC call the same in its trailing metadata, and the CLI
(`visage ingest`) and the Python client (visage.client) wait that long and go on, through the
real Envoy. The limit here: 1 image call a second per caller address, no burst."""
from __future__ import annotations

import base64
import http.client
import io
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from gateway_stack import REPO, start_gateway
from PIL import Image

from tests.waiting import wait_until
from visage.client import Client
from visage.v1 import classify_pb2, classify_pb2_grpc

LIMIT = {"VISAGE_GATEWAY_IMAGE_CALLS_PER_SECOND": "1", "VISAGE_GATEWAY_IMAGE_CALLS_BURST": "1"}
CALLS = 6  # in a row, far faster than one a second: only waiting as told lets them all through


@pytest.fixture(scope="module")
def limited_gateway(mesh, tmp_path_factory):
    gateway = start_gateway(mesh.ports, tmp_path_factory.mktemp("limited-gateway"), LIMIT)
    yield gateway
    gateway.stop()


def small_images(count: int) -> list[bytes]:
    """Distinct little photos without a face (quick for the pipeline; no duplicates)."""
    images = []
    for shade in range(count):
        buffer = io.BytesIO()
        Image.new("RGB", (64, 64), (40 * shade % 256, 90, 160)).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


def post_classify(gateway, content: bytes, source: str) -> tuple[int, dict, dict]:
    """One REST classify from `source` (any 127.x address reaches the loopback gateway; each has its bucket)."""
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=60, source_address=(source, 0))
    try:
        body = json.dumps({"content": base64.b64encode(content).decode()})
        connection.request("POST", "/v1/images:classify", body=body, headers={
            "authorization": f"Bearer {os.environ['VISAGE_TOKEN']}", "content-type": "application/json"})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(response.read())
    finally:
        connection.close()


def test_a_rest_caller_over_the_limit_gets_429_with_retry_after_and_gets_through_after_it(limited_gateway):
    image = small_images(1)[0]

    def refused():
        with ThreadPoolExecutor(max_workers=4) as threads:
            answers = list(threads.map(lambda _: post_classify(limited_gateway, image, "127.0.0.21"), range(4)))
        return next((answer for answer in answers if answer[0] == 429), None)

    status, headers, body = wait_until(refused, "a burst of calls from one address meets the limit")
    assert body["code"] == 8 and "retry-after" in headers, headers
    assert "retry-after" in body["message"], body  # what to do, in words too
    wait = float(headers["retry-after"])
    assert 0 < wait <= 60
    # The caller does as told; nobody else shares its address: it gets through.
    time.sleep(wait)
    status, _, body = post_classify(limited_gateway, image, "127.0.0.21")
    assert status == 200 and body["faces"] == [], body


def test_a_flood_over_the_limit_is_refused_no_sooner_than_retry_after_while_another_caller_is_served(
        limited_gateway):
    """Issue 25: a caller that ignores `retry-after` and sends again as soon as it is answered
    got thousands of refusals a second, and that flood slowed another caller's Classify as
    much as costly images did. Now each refusal comes only when the caller could have
    tried again: one per connection per `retry-after`, whatever the caller does."""
    image = small_images(1)[0]
    flood_answers = []

    def flood_once():
        start = time.monotonic()
        status, headers, body = post_classify(limited_gateway, image, "127.0.0.31")
        flood_answers.append((status, headers, body, time.monotonic() - start))

    with ThreadPoolExecutor(max_workers=2) as flood:  # two connections, each sending again at once
        def refusals():
            list(flood.map(lambda _: flood_once(), range(2)))
            return [answer for answer in flood_answers if answer[0] == 429]
        refused = wait_until(refusals, "the flood meets the limit")
        going_on = [flood.submit(flood_once) for _ in range(2)]
        # Meanwhile another address is answered (its own bucket), not refused.
        status, _, body = post_classify(limited_gateway, image, "127.0.0.32")
        for call in going_on:
            call.result()
    assert status == 200 and body["faces"] == [], body
    status, headers, body, waited = refused[0]
    assert body["code"] == 8 and float(headers["retry-after"]) > 0, (headers, body)
    # A lower bound only (a loaded machine can only make it longer); Envoy's timer may round
    # to its cached loop time, hence the margin. Before: answered within milliseconds.
    assert waited >= 0.9 * float(headers["retry-after"]), (waited, headers)


def test_a_refused_grpc_call_carries_retry_after_in_its_trailing_metadata(limited_gateway):
    image = small_images(1)[0]
    with grpc.insecure_channel(f"127.0.0.1:{limited_gateway.port}") as channel:  # no retrying interceptor
        stub = classify_pb2_grpc.ClassifyServiceStub(channel)

        def refused():
            try:
                stub.Classify(classify_pb2.ClassifyRequest(content=image), timeout=60)
            except grpc.RpcError as error:
                return error
            return None
        error = wait_until(refused, "calls in a row from one address meet the limit")
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    assert float(dict(error.trailing_metadata())["retry-after"]) > 0


def test_the_python_client_waits_as_told_and_every_call_succeeds(limited_gateway):
    with Client(f"127.0.0.1:{limited_gateway.port}") as visage:
        replies = [visage.classify(image) for image in small_images(CALLS)]
    assert [len(reply.faces) for reply in replies] == [0] * CALLS


def test_visage_ingest_through_the_gateway_waits_as_told_and_stores_every_image(limited_gateway, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for number, image in enumerate(small_images(CALLS)):
        (folder / f"photo{number}.png").write_bytes(image)
    result = subprocess.run([sys.executable, "-m", "visage.cli", "ingest", "--address",
                             f"127.0.0.1:{limited_gateway.port}", "--batch-size", "1", str(folder)],
                            capture_output=True, text=True, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    summary = dict(line.rsplit(None, 1) for line in result.stdout.splitlines() if line.strip())
    assert summary["images"] == str(CALLS) and summary["failures"] == "0", result.stdout
    assert "images without a face" in result.stdout
