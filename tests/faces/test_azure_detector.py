"""The Azure AI Face detector through the real SDK over real HTTP, against a
local server that answers as the Face REST API documents
(POST {endpoint}/face/v1.x/detect)."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest

from tests.faces.conftest import read
from visage.config import Config
from visage.faces.detectors import AzureFaceDetector, DetectorUnavailable
from visage.faces.pipeline import FacePipeline
from visage.faces.settings import FaceSettings

KEY = "test-key-123"
OBAMA2_FACE = {"top": 290, "left": 171, "width": 267, "height": 268}  # where HOG finds it too


class FaceApi(ThreadingHTTPServer):
    """Scripted answers: each request pops the next (status, headers, body);
    the last one repeats."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), FaceApiHandler)
        self.script: list[tuple[int, dict, object]] = []
        self.requests: list[dict] = []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def next_answer(self):
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]


class FaceApiHandler(BaseHTTPRequestHandler):
    server: FaceApi

    def do_POST(self) -> None:  # noqa: N802 (http.server naming)
        url = urlparse(self.path)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.requests.append({"time": time.monotonic(), "path": url.path, "query": parse_qs(url.query), "key":
                                     self.headers.get("Ocp-Apim-Subscription-Key"),
                                     "content_type": self.headers.get("Content-Type"), "body": body})
        status, headers, payload = self.server.next_answer()
        if self.headers.get("Ocp-Apim-Subscription-Key") != KEY:
            status, headers, payload = 401, {}, {"error": {"code": "401", "message":
                                             "Access denied due to invalid subscription key or wrong API "
                                             "endpoint. Make sure to provide a valid key for an active "
                                             "subscription and use a correct regional API endpoint for "
                                             "your resource."}}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def face_api():
    server = FaceApi()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def detected(rectangle) -> list[dict]:
    return [{"faceRectangle": rectangle}]


def error(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def fast_retries(endpoint: str, key: str = KEY) -> AzureFaceDetector:
    return AzureFaceDetector(endpoint, key, retry_total=2, retry_backoff_factor=0.01)


def test_pipeline_uses_azure_boxes_and_embeds_locally(face_api, faces_dir, monkeypatch):
    face_api.script = [(200, {}, detected(OBAMA2_FACE))]
    monkeypatch.setenv("VISAGE_AZURE_FACE_ENDPOINT", face_api.endpoint)
    monkeypatch.setenv("VISAGE_AZURE_FACE_KEY", KEY)
    azure = FacePipeline(Config())
    assert azure.detector.name == "azure"
    content = read(faces_dir / "presidents" / "obama" / "obama2.jpg")

    [face] = azure.analyze(content).faces

    assert face.box == (171, 290, 438, 558)
    [local] = FacePipeline(Config(), FaceSettings()).analyze(content).faces
    assert np.linalg.norm(face.embedding - local.embedding) < 0.1  # same box → same face, embedded here
    [request] = face_api.requests
    assert request["path"].startswith("/face/v1.") and request["path"].endswith("/detect")
    assert request["query"]["detectionModel"] == ["detection_03"]
    assert request["query"]["returnFaceId"] == ["false"]
    assert request["key"] == KEY and request["content_type"] == "application/octet-stream"
    assert request["body"][:2] == b"\xff\xd8"  # the decoded, upright image sent as JPEG


def test_wrong_key_is_a_clear_error(face_api):
    face_api.script = [(200, {}, detected(OBAMA2_FACE))]
    with pytest.raises(DetectorUnavailable, match=r"rejected the credentials \(HTTP 401\).*invalid subscription"):
        fast_retries(face_api.endpoint, key="wrong").detect(np.zeros((64, 64, 3), np.uint8))


def test_throttling_is_retried_after_the_advertised_delay(face_api):
    face_api.script = [(429, {"Retry-After": "1"}, error("429", "Rate limit is exceeded. Try again in 1 second.")),
                       (200, {}, detected({"top": 5, "left": 6, "width": 30, "height": 40}))]
    boxes = fast_retries(face_api.endpoint).detect(np.zeros((64, 64, 3), np.uint8))
    assert boxes == [(6, 5, 36, 45)]
    first, second = face_api.requests
    assert second["time"] - first["time"] >= 0.9  # waited as Retry-After asked


def test_server_errors_are_reported_after_retries(face_api):
    face_api.script = [(503, {}, error("ServiceUnavailable", "The service is temporarily overloaded."))]
    with pytest.raises(DetectorUnavailable, match=r"HTTP 503.*temporarily overloaded"):
        fast_retries(face_api.endpoint).detect(np.zeros((64, 64, 3), np.uint8))
    assert len(face_api.requests) == 3  # the first try and two retries


def test_no_face_found_is_an_empty_list(face_api):
    face_api.script = [(200, {}, [])]
    assert fast_retries(face_api.endpoint).detect(np.zeros((64, 64, 3), np.uint8)) == []
