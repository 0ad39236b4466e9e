"""Issue 30 in the browser (Debian's Chromium through the real Envoy): on an image page, "Add a face",
a box dragged with the mouse over the face the detector missed, a name typed in the same type-ahead
box as elsewhere, Enter: the face is stored as drawn by the signed-in user, labelled, and boxed on
this page and, live, on another viewer's. Escape cancels a drawing."""
from __future__ import annotations

import pytest

from gateway_stack import sign_in
from test_browser import browser, page  # noqa: F401 - the Chromium fixtures
from tests.waiting import wait_until

pytestmark = pytest.mark.browser


def drag_over(page, image, box) -> None:
    """Drags the mouse over `box` (the stored image's pixels) of the photo as it is displayed."""
    shown = page.locator("#photo img").bounding_box()
    scale_x, scale_y = shown["width"] / image.width, shown["height"] / image.height
    page.mouse.move(shown["x"] + box[0] * scale_x, shown["y"] + box[1] * scale_y)
    page.mouse.down()
    page.mouse.move(shown["x"] + (box[0] + box[2]) / 2 * scale_x, shown["y"] + (box[1] + box[3]) / 2 * scale_y,
                    steps=4)
    page.mouse.move(shown["x"] + box[2] * scale_x, shown["y"] + box[3] * scale_y, steps=4)
    page.mouse.up()


def test_draw_a_missed_face_with_the_mouse_and_name_it(browser, page, gateway, mesh, faces_dir,  # noqa: F811
                                                      test_output_dir):
    photo = faces_dir / "scenes" / "two_people.jpg"
    left, right = sorted(mesh.store.get_faces(mesh.ingest_files([photo])[photo]), key=lambda f: f.box[0])
    mesh.store.delete_face(left.face_id)  # as if the detector had missed the person on the left
    image = mesh.store.get_image(left.image_id)
    other_viewer = browser.new_context(base_url=gateway.url, viewport={"width": 900, "height": 700})
    sign_in(other_viewer)
    watching = other_viewer.new_page()
    watching.goto(f"/#/image/{image.image_id}")
    watching.locator("#photo .box").first.wait_for()
    assert watching.locator("#photo .box").count() == 1

    page.set_viewport_size({"width": 720, "height": 900})  # the photo shown at about half its pixels
    page.goto(f"/#/image/{image.image_id}")
    page.locator("#photo img[src]").wait_for()
    assert page.locator("#photo img").bounding_box()["width"] < 0.7 * image.width
    page.click("#add-face")
    assert page.locator("#photo.drawing").count() == 1
    page.keyboard.press("Escape")  # cancels
    assert page.locator("#photo.drawing").count() == 0 and page.locator("#add-face").inner_text() == "Add a face"

    page.click("#add-face")
    drag_over(page, image, left.box)
    name = page.locator(".draw-form input.picker")
    name.wait_for()
    page.screenshot(path=str(test_output_dir / "gateway-add-face.png"))
    name.fill("Lefty")
    name.press("Enter")
    page.locator("#photo .box.labelled").wait_for()
    card = page.locator(".face-card", has=page.locator(".name", has_text="Lefty"))
    assert "drawn by test-admin" in card.locator(".meta").inner_text()

    [drawn] = [f for f in mesh.store.faces_of_image(image.image_id) if f.drawn_by]
    assert drawn.drawn_by == "test-admin"
    centre_x, centre_y = (drawn.box[0] + drawn.box[2]) / 2, (drawn.box[1] + drawn.box[3]) / 2
    assert left.box[0] < centre_x < left.box[2] and left.box[1] < centre_y < left.box[3]  # where it was drawn
    [label] = mesh.store.labels_of_face(drawn.face_id)
    assert mesh.store.get_persona(label.persona_id).display_name == "Lefty"
    assert page.locator("#photo .box").count() == 2

    wait_until(lambda: watching.locator("#photo .box").count() == 2, "the other viewer sees the new face")
    other_viewer.close()


def touch_drag_over(page, image, box) -> None:
    """The same drag with a finger: real touch input through the DevTools protocol."""
    shown = page.locator("#photo img").bounding_box()
    scale_x, scale_y = shown["width"] / image.width, shown["height"] / image.height
    points = [(box[0], box[1]), ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), (box[2], box[3])]
    cdp = page.context.new_cdp_session(page)
    for kind, (x, y) in zip(["touchStart", "touchMove", "touchMove"], points):
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [
            {"x": shown["x"] + x * scale_x, "y": shown["y"] + y * scale_y}]})
    cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    cdp.detach()


def test_a_box_over_the_background_says_so_and_adds_nothing(page, gateway, mesh, faces_dir):  # noqa: F811
    """Drawn with a finger: a box over the coffee table is refused, and nothing is stored."""
    photo = faces_dir / "scenes" / "bbt1.jpg"
    face_ids = mesh.ingest_files([photo])[photo]
    image = mesh.store.get_image(mesh.store.get_face(face_ids[0]).image_id)
    page.goto(f"/#/image/{image.image_id}")
    page.locator("#photo img[src]").wait_for()
    page.click("#add-face")
    touch_drag_over(page, image, (560, 560, 700, 700))  # the coffee table
    page.locator(".draw-form input.picker").press("Enter")  # no name: an unknown face
    page.locator(".toast.error", has_text="no face found").wait_for()
    assert len(mesh.store.faces_of_image(image.image_id)) == len(face_ids)
