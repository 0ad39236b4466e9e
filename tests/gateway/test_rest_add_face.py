"""Issue 30 over REST through the real Envoy: POST /v1/images/{image_id}/faces draws a face on a
stored photo (labeller and up); a box without a face is 400, one over a stored face 409."""
from __future__ import annotations

import base64
import json

import pytest

from visage.auth.roles import Role

BACKDROP = {"left": 480, "top": 20, "right": 620, "bottom": 160}  # between the two people of two_people.jpg


def test_a_face_drawn_over_rest_is_stored_as_drawn_by_the_caller(gateway, faces_dir, issue_token):
    photo = (faces_dir / "scenes/two_people.jpg").read_bytes()
    status, scene = gateway.json("POST", "/v1/images:ingest", {"content": base64.b64encode(photo).decode(),
                                                               "filename": "two_people.jpg"})
    assert status == 200, scene
    image_id, [left_face, right_face] = scene["image"]["imageId"], sorted(scene["faces"],
                                                                        key=lambda f: f["box"]["left"])
    # As if the detector had missed the person on the left: the face is erased, then drawn.
    assert gateway.json("DELETE", f"/v1/faces/{left_face['faceId']}")[0] == 200
    status, persona = gateway.json("POST", "/v1/personas", {"displayName": "Left"})
    assert status == 200
    labeller = {"authorization": f"Bearer {issue_token(Role.LABELLER, 'lena')}"}
    path = f"/v1/images/{image_id}/faces"

    status, added = gateway.json("POST", path, {"box": left_face["box"], "personaId": persona["personaId"]},
                                 headers=labeller)
    assert status == 200, added
    face = added["face"]
    assert face["drawnBy"] == "lena" and face["drawTime"] and face["faceId"] != left_face["faceId"]
    assert [(label["personaId"], label["labelledBy"]) for label in face["labels"]] == [(persona["personaId"], "lena")]
    status, image = gateway.json("GET", f"/v1/images/{image_id}")
    assert status == 200 and {f["faceId"]: f.get("drawnBy", "") for f in image["faces"]} == {
        right_face["faceId"]: "", face["faceId"]: "lena"}

    status, again = gateway.json("POST", path, {"box": left_face["box"]}, headers=labeller)
    assert status == 409 and again["code"] == 6 and face["faceId"] in again["message"]
    status, refused = gateway.json("POST", path, {"box": BACKDROP}, headers=labeller)
    assert status == 400 and refused["code"] == 3 and "no face found" in refused["message"]
    viewer = {"authorization": f"Bearer {issue_token(Role.VIEWER, 'vic')}"}
    assert gateway.json("POST", path, {"box": BACKDROP}, headers=viewer)[0] == 403
    status, image = gateway.json("GET", f"/v1/images/{image_id}")
    assert len(image["faces"]) == 2 and image["image"]["faceCount"] == 2


def test_the_readme_grpcurl_call_draws_a_face(mesh, faces_dir):
    """As README "A face the detector missed" calls it, on the ingest service's own port."""
    from test_grpcurl import GRPCURL, grpcurl
    if not GRPCURL.is_file():
        pytest.skip("grpcurl not installed: run `make grpcurl`")
    photo = faces_dir / "presidents/obama/obama1.jpg"
    [face_id] = mesh.ingest_files([photo])[photo]
    face = mesh.store.get_face(face_id)
    mesh.store.delete_face(face_id)  # as if the detector had missed it
    left, top, right, bottom = face.box
    request = {"imageId": face.image_id, "box": {"left": left, "top": top, "right": right, "bottom": bottom}}
    added = json.loads(grpcurl("-d", json.dumps(request), f"127.0.0.1:{mesh.ports['ingest']}",
                               "visage.v1.IngestService/AddFace"))
    assert added["face"]["drawn_by"] == "test-admin" and added["face"]["image_id"] == face.image_id  # proto names
    assert [f.drawn_by for f in mesh.store.faces_of_image(face.image_id)] == ["test-admin"]
