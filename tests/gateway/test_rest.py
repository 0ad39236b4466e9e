"""REST/JSON through the real Envoy to the real services: what a browser or a
curl user sees (status codes, readable errors, limits, SSE, CSRF/CORS)."""
from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import threading
import time

from visage.loopback import free_port
from gateway_stack import start_gateway
from visage.faces.metadata import minimise
from visage_gateway.envoy_config import MAX_REQUEST_BODY_BYTES


def test_persona_crud_round_trip(gateway):
    status, created = gateway.json("POST", "/v1/personas", {"displayName": "Ada <script>alert(1)</script>"})
    assert status == 200
    persona_id = created["personaId"]
    assert created["displayName"] == "Ada <script>alert(1)</script>"
    assert created["labelledFaceCount"] == "0"  # primitive fields always printed
    status, renamed = gateway.json("PATCH", f"/v1/personas/{persona_id}", {"displayName": "Ada L."})
    assert (status, renamed["displayName"]) == (200, "Ada L.")
    status, listed = gateway.json("GET", "/v1/personas")
    assert status == 200 and persona_id in [p["personaId"] for p in listed["personas"]]
    assert gateway.json("DELETE", f"/v1/personas/{persona_id}")[0] == 200
    status, error = gateway.json("GET", f"/v1/personas/{persona_id}")
    assert status == 404 and "not found" in error["message"]


def test_unknown_id_is_404_with_the_services_message(gateway):
    status, error = gateway.json("GET", "/v1/personas/no-such-persona")
    assert status == 404
    assert error["code"] == 5 and "no-such-persona" in error["message"]


def test_invalid_argument_is_400_with_a_message(gateway):
    status, error = gateway.json("POST", "/v1/personas", {"displayName": ""})
    assert status == 400 and error["code"] == 3 and error["message"]


def test_malformed_json_is_400_with_a_json_message(gateway):
    status, headers, body = gateway.request("POST", "/v1/personas", b'{"displayName": ',
                                            headers={"content-type": "application/json"})
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["message"]


def test_unknown_query_parameters_are_ignored(gateway):
    status, listed = gateway.json("GET", "/v1/personas?utm_source=mail&pageSize=1")
    assert status == 200 and "personas" in listed


def test_bad_query_parameter_value_is_400(gateway):
    status, error = gateway.json("GET", "/v1/personas?pageSize=not-a-number")
    assert status == 400 and error["message"]


def test_unknown_rest_path_is_404_json(gateway):
    status, error = gateway.json("GET", "/v1/no/such/thing")
    assert status == 404 and "openapi.json" in error["message"]
    assert gateway.json("DELETE", "/v1/images")[0] == 404  # known path, no such method


def test_oversized_body_is_rejected_and_the_gateway_stays_up(gateway):
    body = b'{"filename": "big.jpg", "content": "' + b"A" * (MAX_REQUEST_BODY_BYTES + 1024) + b'"}'
    status, headers, data = gateway.request("POST", "/v1/images:ingest", body,
                                            headers={"content-type": "application/json"})
    assert status == 413
    assert json.loads(data)["message"]
    assert gateway.json("GET", "/v1/personas")[0] == 200


def test_upload_through_rest_finds_faces_and_serves_crops(gateway, faces_dir):
    photo = faces_dir / "scenes/two_people.jpg"
    payload = {"content": base64.b64encode(photo.read_bytes()).decode(), "filename": photo.name}
    status, result = gateway.json("POST", "/v1/images:ingest", payload)
    assert status == 200, result
    assert result["image"]["filename"] == "two_people.jpg" and len(result["faces"]) == 2
    status, headers, crop = gateway.request("GET", f"/v1/faces/{result['faces'][0]['faceId']}/crop")
    assert status == 200 and headers["content-type"] == "image/jpeg" and crop[:2] == b"\xff\xd8"
    status, headers, original = gateway.request("GET", f"/v1/images/{result['image']['imageId']}/content")
    assert status == 200 and original == minimise(photo.read_bytes())  # the pixels, without metadata
    # The face as the UI shows it: cut upright from the photo, cacheable, and only with a token.
    upright = f"/v1/faces/{result['faces'][0]['faceId']}/crop?upright=true"
    status, headers, data = gateway.request("GET", upright)
    assert status == 200 and headers["content-type"] == "image/jpeg" and data != crop
    assert "immutable" in headers["cache-control"]
    assert gateway.request("GET", upright, anonymous=True)[0] == 401


def test_corrupt_upload_is_a_readable_400(gateway):
    payload = {"content": base64.b64encode(b"not an image at all").decode(), "filename": "x.jpg"}
    status, error = gateway.json("POST", "/v1/images:ingest", payload)
    assert status == 400 and error["message"]


def read_sse_events(port: int, path: str, into: list, stop: threading.Event, opened: threading.Event) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", path, headers={"accept": "text/event-stream",
                                             "authorization": f"Bearer {os.environ['VISAGE_TOKEN']}"})
    response = connection.getresponse()
    into.append(("headers", response.status, response.getheader("content-type")))
    opened.set()
    while not stop.is_set():
        line = response.fp.readline()
        if not line:
            break
        if line.startswith(b"data: "):
            into.append(("event", json.loads(line[len(b"data: "):])))
    connection.close()


def test_watch_events_streams_server_sent_events(gateway):
    received: list = []
    stop, opened = threading.Event(), threading.Event()
    reader = threading.Thread(target=read_sse_events, daemon=True,
                              args=(gateway.port, "/v1/events:watch?types=EVENT_TYPE_PERSONA_CREATED", received, stop, opened))
    reader.start()
    assert opened.wait(15)
    assert received[0] == ("headers", 200, "text/event-stream")
    # No pause needed: Envoy sends the headers once WatchEvents has fixed its "from now" cursor.
    persona_id = gateway.json("POST", "/v1/personas", {"displayName": "Streamed"})[1]["personaId"]
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not any(
            kind == "event" and item["subject"] == persona_id for kind, item, *_ in received):
        time.sleep(0.1)
    stop.set()
    events = [item for kind, item, *_ in received if kind == "event"]
    created = [e for e in events if e["subject"] == persona_id]
    assert created and created[0]["type"] == "EVENT_TYPE_PERSONA_CREATED" and created[0]["cursor"]


def test_openapi_document_is_served_from_the_protos(gateway):
    status, document = gateway.json("GET", "/openapi.json")
    assert status == 200 and document["openapi"].startswith("3.")
    paths = document["paths"]
    assert {"/v1/personas", "/v1/images:ingest", "/v1/modelVersions/{version}:activate"} <= set(paths)
    assert "text/event-stream" in paths["/v1/events:watch"]["get"]["responses"]["200"]["content"]


def test_ui_is_served_with_a_strict_content_security_policy(gateway):
    status, headers, body = gateway.request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in headers["content-security-policy"]
    assert b'<script src="/app.js"' in body
    for asset in ("/app.js", "/style.css", "/favicon.svg"):
        assert gateway.request("GET", asset)[0] == 200


def test_cross_site_writes_are_refused(gateway):
    before = len(gateway.json("GET", "/v1/personas")[1]["personas"])
    status, error = gateway.json("POST", "/v1/personas", {"displayName": "csrf"},
                                 headers={"origin": "http://evil.example"})
    assert status == 403 and error["message"]
    assert len(gateway.json("GET", "/v1/personas")[1]["personas"]) == before
    same_origin = {"origin": gateway.url}
    assert gateway.json("POST", "/v1/personas", {"displayName": "same origin"}, headers=same_origin)[0] == 200


def test_cors_allows_only_configured_origins_and_missing_backends_are_503(tmp_path):
    # Nothing listens on these ports: every backend is down.
    dead = {name: free_port() for name in ("query", "ingest", "trainer", "classifier")}
    gateway = start_gateway(dead, tmp_path, {"VISAGE_CORS_ORIGINS": "http://app.example"})
    try:
        preflight = {"origin": "http://app.example", "access-control-request-method": "POST"}
        status, headers, _ = gateway.request("OPTIONS", "/v1/personas", headers=preflight, anonymous=True)
        assert status == 200 and headers["access-control-allow-origin"] == "http://app.example"
        assert "authorization" in headers["access-control-allow-headers"]  # the other origin's page sends its token
        status, headers, _ = gateway.request("OPTIONS", "/v1/personas",
                                             headers={**preflight, "origin": "http://other.example"})
        assert "access-control-allow-origin" not in headers
        status, error = gateway.json("GET", "/v1/personas", headers={"origin": "http://app.example"})
        assert status == 503 and error["message"]
        assert headers_of(gateway, "GET", "/v1/personas", {"origin": "http://app.example"})["access-control-allow-origin"] == "http://app.example"
    finally:
        assert gateway.stop() == 0


def test_sigterm_stops_envoy_and_the_supervisor(mesh, tmp_path):
    gateway = start_gateway(mesh.ports, tmp_path)
    envoy_pids = subprocess.run(["pgrep", "-P", str(gateway.process.pid)], capture_output=True, text=True).stdout.split()
    assert len(envoy_pids) == 1
    assert gateway.stop() == 0
    assert subprocess.run(["kill", "-0", envoy_pids[0]], capture_output=True).returncode != 0


def headers_of(gateway, method: str, path: str, headers: dict[str, str]) -> dict[str, str]:
    return gateway.request(method, path, headers=headers)[1]
