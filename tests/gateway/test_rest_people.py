"""The organising RPCs over REST through the real Envoy: suggested people,
batch labels, merge, hide, search, duplicate names, small cached thumbnails."""
from __future__ import annotations

import io
import time

from PIL import Image

WAIT_SECONDS = 120


def test_organise_faces_over_rest(gateway, mesh, faces_dir):
    amy = [ids[0] for ids in mesh.ingest_files(sorted((faces_dir / "bbt" / "amy").iterdir())).values()]

    deadline = time.monotonic() + WAIT_SECONDS
    while True:  # the first request starts the background clustering
        status, body = gateway.json("GET", "/v1/faces:clusters?pageSize=5&sampleSize=2")
        assert status == 200, body
        group = next((c for c in body.get("clusters", []) if len(set(c["faceIds"]) & set(amy)) >= 3), None)
        if group:
            break
        assert time.monotonic() < deadline, body
        time.sleep(0.2)
    assert len(group["sampleFaces"]) == 2 and 0 < group["quality"] <= 1

    status, persona = gateway.json("POST", "/v1/personas", {"displayName": "Amy F"})
    assert status == 200
    status, error = gateway.json("POST", "/v1/personas", {"displayName": "amy f "})
    assert status == 409 and error["code"] == 6 and persona["personaId"] in error["message"]

    labels = [{"faceId": face_id, "verdict": "VERDICT_BELONGS"} for face_id in group["faceIds"]]
    status, error = gateway.json("POST", "/v1/faces:batchLabel",
                                 {"personaId": persona["personaId"], "labels": labels + [{"faceId": "nope", "verdict": 1}]})
    assert status == 404 and "nothing was labelled" in error["message"]
    status, labelled = gateway.json("POST", "/v1/faces:batchLabel", {"personaId": persona["personaId"], "labels": labels})
    assert status == 200 and len(labelled["faces"]) == len(labels)

    status, other = gateway.json("POST", "/v1/personas", {"displayName": "Amy (2)"})
    status, merged = gateway.json("POST", f"/v1/personas/{persona['personaId']}:merge",
                                  {"sourcePersonaIds": [other["personaId"]]})
    assert status == 200 and merged["labelledFaceCount"] == str(len(labels))

    status, hidden = gateway.json("POST", f"/v1/personas/{persona['personaId']}:setHidden", {"hidden": True})
    assert status == 200 and hidden["hidden"] is True
    status, found = gateway.json("GET", "/v1/personas?query=AMY&includeHidden=true")
    assert [p["displayName"] for p in found["personas"]] == ["Amy F"]
    status, found = gateway.json("GET", "/v1/personas?query=AMY")
    assert found.get("personas", []) == []

    status, face = gateway.json("POST", f"/v1/faces/{amy[0]}:setHidden", {"hidden": True})
    assert status == 200 and face["hidden"] is True


def test_image_thumbnails_are_small_and_cacheable(gateway, mesh, faces_dir):
    photo = faces_dir / "scenes" / "bbt1.jpg"
    face_id = next(iter(mesh.ingest_files([photo]).values()))[0]
    image_id = face_id.rsplit("-", 1)[0]
    status, headers, original = gateway.request("GET", f"/v1/images/{image_id}/content")
    assert status == 200
    status, headers, small = gateway.request("GET", f"/v1/images/{image_id}/content?size=200")
    assert status == 200 and headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(small)).size) == 200 and len(small) < len(original) / 4
    assert "immutable" in headers.get("cache-control", "")
    status, _, body = gateway.request("GET", f"/v1/images/{image_id}/content?size=99999")
    assert status == 400 and b"size" in body
