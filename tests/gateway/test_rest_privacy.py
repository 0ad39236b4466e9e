"""Erasure over REST through the real Envoy: DELETE on the resource, 200 with what
went, then 404 (a second DELETE changes nothing); uploads keep no directory."""
from __future__ import annotations

import base64


def upload(gateway, photo, filename: str) -> dict:
    payload = {"content": base64.b64encode(photo.read_bytes()).decode(), "filename": filename}
    status, result = gateway.json("POST", "/v1/images:ingest", payload)
    assert status == 200, result
    return result


def test_delete_image_and_face_over_rest(gateway, faces_dir):
    scene = upload(gateway, faces_dir / "scenes/two_people.jpg", "C:\\Users\\alice\\Secret Trip\\two_people.jpg")
    assert scene["image"]["filename"] == "two_people.jpg"
    image_id, face_ids = scene["image"]["imageId"], [f["faceId"] for f in scene["faces"]]

    status, erased = gateway.json("DELETE", f"/v1/faces/{face_ids[0]}")
    assert status == 200 and erased["faceIds"] == [face_ids[0]]
    assert gateway.request("GET", f"/v1/faces/{face_ids[0]}/crop")[0] == 404
    assert gateway.json("DELETE", f"/v1/faces/{face_ids[0]}")[0] == 404
    status, image = gateway.json("GET", f"/v1/images/{image_id}")
    assert status == 200 and [f["faceId"] for f in image["faces"]] == face_ids[1:]

    status, erased = gateway.json("DELETE", f"/v1/images/{image_id}")
    assert status == 200 and erased["imageIds"] == [image_id] and erased["faceIds"] == face_ids[1:]
    for path in (f"/v1/images/{image_id}", f"/v1/images/{image_id}/content", f"/v1/faces/{face_ids[1]}"):
        assert gateway.request("GET", path)[0] == 404, path
    status, error = gateway.json("DELETE", f"/v1/images/{image_id}")
    assert status == 404 and image_id in error["message"]


def test_delete_persona_erasing_its_faces_over_rest(gateway, faces_dir):
    photo = upload(gateway, faces_dir / "bbt/raj/raj1.png", "raj1.png")
    status, persona = gateway.json("POST", "/v1/personas", {"displayName": "Raj"})
    face_id = photo["faces"][0]["faceId"]
    assert gateway.json("POST", f"/v1/faces/{face_id}:label",
                        {"personaId": persona["personaId"], "verdict": "VERDICT_BELONGS"})[0] == 200
    status, erased = gateway.json("DELETE", f"/v1/personas/{persona['personaId']}?eraseFaces=true")
    assert status == 200 and erased["personaIds"] == [persona["personaId"]], erased  # it used to answer {}
    assert erased["imageIds"] == [photo["image"]["imageId"]] and erased["faceIds"] == [face_id]
    assert gateway.request("GET", f"/v1/images/{photo['image']['imageId']}/content")[0] == 404
    assert gateway.request("GET", f"/v1/faces/{face_id}")[0] == 404
    assert gateway.json("DELETE", f"/v1/personas/{persona['personaId']}")[0] == 404
