"""Erasure in the browser (Debian's Chromium through the real Envoy): a face card and
an image page erase after a confirm that says what goes; deleting a persona offers
keeping its faces as unknown or erasing them with their photos."""
from __future__ import annotations

import grpc
import pytest

from test_browser import browser, page  # noqa: F401 - the Chromium fixtures
from visage.v1 import query_pb2, query_pb2_grpc
from visage.v1 import resources_pb2 as pb

pytestmark = pytest.mark.browser


def accept_dialogs(page) -> list[str]:
    messages: list[str] = []

    def accept(dialog):
        messages.append(dialog.message)
        dialog.accept()
    page.on("dialog", accept)
    return messages


def test_erase_a_face_then_its_image(page, gateway, mesh, faces_dir, test_output_dir):  # noqa: F811
    photo = faces_dir / "scenes" / "two_people.jpg"
    face_ids = mesh.ingest_files([photo])[photo]
    image_id = mesh.store.get_face(face_ids[0]).image_id
    confirms = accept_dialogs(page)
    page.goto(f"/#/image/{image_id}")
    page.locator(f'.face-card[data-face-id="{face_ids[0]}"]').wait_for()
    page.screenshot(path=str(test_output_dir / "gateway-erase-image.png"), full_page=True)
    page.locator(f'.face-card[data-face-id="{face_ids[0]}"] button.erase-face').click()
    page.locator(f'.face-card[data-face-id="{face_ids[0]}"]').wait_for(state="detached")
    assert "Erase this face" in confirms[0] and "The photo itself stays" in confirms[0]
    assert mesh.store.get_face(face_ids[0]) is None and mesh.store.get_face(face_ids[1]) is not None

    page.click("#erase-image")
    page.wait_for_url("**/#/images")
    assert "Erase this image" in confirms[1] and "1 face" in confirms[1]
    assert mesh.store.get_image(image_id) is None and mesh.store.get_face(face_ids[1]) is None


@pytest.mark.parametrize("choice", ["keep", "erase"])
def test_delete_a_persona_offers_keeping_or_erasing_its_faces(page, gateway, mesh, faces_dir, choice,  # noqa: F811
                                                              test_output_dir):
    photo = faces_dir / "bbt" / "howard" / f"howard{2 if choice == 'keep' else 3}.png"
    [face_id] = mesh.ingest_files([photo])[photo]
    with grpc.insecure_channel(f"127.0.0.1:{mesh.ports['query']}") as channel:
        query = query_pb2_grpc.QueryServiceStub(channel)
        persona_id = query.CreatePersona(query_pb2.CreatePersonaRequest(
            persona=pb.Persona(display_name=f"Howard {choice}"))).persona_id
        query.LabelFace(query_pb2.LabelFaceRequest(face_id=face_id, persona_id=persona_id,
                                                   verdict=pb.VERDICT_BELONGS))
    page.goto(f"/#/persona/{persona_id}")
    page.click("#delete-persona")
    dialog = page.locator("#delete-persona-dialog")
    assert "keep the 1 face as unknown" in dialog.locator("#delete-keep-faces").inner_text()
    assert "with their whole photos" in dialog.locator("#delete-erase-faces").inner_text()
    page.screenshot(path=str(test_output_dir / f"gateway-delete-persona-{choice}.png"))
    page.click("#delete-keep-faces" if choice == "keep" else "#delete-erase-faces")
    page.wait_for_url("**/#/")
    assert mesh.store.get_persona(persona_id) is None
    assert (mesh.store.get_face(face_id) is not None) == (choice == "keep")
