"""A person in Debian's Chromium, through the real Envoy, with every real
service: creates personas, labels faces with clicks, watches predictions for
other faces appear without a reload, confirms one, uploads an image and sees
its faces boxed, rolls the model back. Screenshots go to test-output/."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from gateway_stack import sign_in

pytestmark = pytest.mark.browser
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
PEOPLE = ["sheldon", "penny", "leonard"]
LABELLED_PER_PERSON = 3
LIVE_SECONDS = 150  # training + re-classification on a shared 2-core machine


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip("Debian's Chromium is missing: run `make chromium`")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, gateway):
    context = browser.new_context(base_url=gateway.url, viewport={"width": 1280, "height": 900})
    sign_in(context)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors: {errors}"


def poll(page, condition, seconds: float) -> None:
    """wait_for_function would eval() in the page, which the UI's CSP forbids."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        page.wait_for_timeout(200)


def live_updates_connected(page) -> None:
    """Waits until the page's event stream is open (its headers came: the service watches
    from its start cursor), so an event appended from here on reaches the page. A page
    (re)loaded connects without a cursor: an event appended before that is not shown."""
    page.locator("#live-dot.on").wait_for(timeout=LIVE_SECONDS * 1000)


def drawn_boxes(page) -> int:
    """Face boxes drawn over a loaded photo (not collapsed) with a name on them."""
    if not page.locator("#photo img").evaluate("img => img.complete && img.naturalWidth > 0"):
        return 0
    return page.locator("#photo .box").evaluate_all("""els => els.filter(e => {
        const r = e.getBoundingClientRect();
        return r.width > 10 && r.height > 10 && e.querySelector('.label').textContent; }).length""")


def shoot(page, out: Path, name: str) -> None:
    page.screenshot(path=str(out / f"gateway-{name}.png"), full_page=True)


def create_persona(page, name: str) -> None:
    page.goto("/#/")
    page.fill("#create-persona input", name)
    page.click("#create-persona button[type=submit]")
    page.locator(".persona-card .name", has_text=name).wait_for()


def test_label_faces_and_watch_predictions_arrive_live(page, gateway, mesh, faces_dir, test_output_dir):
    crops = {person: sorted((faces_dir / "bbt" / person).iterdir()) for person in PEOPLE}
    face_ids = {person: [ids[0] for ids in mesh.ingest_files(paths).values()] for person, paths in crops.items()}
    hostile = 'Sheldon <img src=x onerror="window.pwned=1">'
    names = {"sheldon": hostile, "penny": "Penny", "leonard": "Leonard"}
    for person in PEOPLE:
        create_persona(page, names[person])
    assert page.locator(".persona-card .name", has_text="<img").inner_text() == hostile  # shown as text
    assert page.evaluate("window.pwned") is None
    shoot(page, test_output_dir, "personas-empty")

    # Label the first faces of each person from the unknown-faces page: select them, pick
    # the name, Assign. One action per person, since a model trained on a person's first
    # label may predict their next faces, which then leave this page before they are clicked.
    page.goto("/#/unknown")
    for person in PEOPLE:
        cards = [page.locator(f'#unknown .face-card[data-face-id="{face_id}"]')
                 for face_id in face_ids[person][:LABELLED_PER_PERSON]]
        for card in cards:
            card.locator("input.pick").check()
        page.fill("#bulk-persona", names[person])
        page.click("#assign-selected")
        for card in cards:
            card.wait_for(state="detached")
    shoot(page, test_output_dir, "unknown-after-labelling")

    # Open Sheldon: the labelled faces are there; predictions for the others arrive live.
    page.goto("/#/")
    page.locator(".persona-card", has_text="Sheldon").click()
    page.locator("#labelled .face-card").first.wait_for()
    assert page.locator("#labelled .face-card").count() == LABELLED_PER_PERSON
    page.evaluate("window.__noReload = true")  # a reload would clear this
    unlabelled = face_ids["sheldon"][LABELLED_PER_PERSON:]
    for face_id in unlabelled:
        page.locator(f'#predicted .face-card[data-face-id="{face_id}"]').wait_for(timeout=LIVE_SECONDS * 1000)
    assert page.evaluate("window.__noReload") is True
    ranked = [float(m.group(1)) for m in (re.search(r"(\d+)%", t)
                                          for t in page.locator("#predicted .meta").all_inner_texts()) if m]
    assert ranked == sorted(ranked, reverse=True)  # most confident first
    shoot(page, test_output_dir, "persona-predictions")

    # Confirm one prediction with one click: it becomes a labelled face.
    confirmed = unlabelled[0]
    page.locator(f'#predicted .face-card[data-face-id="{confirmed}"] button.confirm').click()
    page.locator(f'#labelled .face-card[data-face-id="{confirmed}"]').wait_for()
    # Reject another: it leaves the predictions and shows as rejected.
    rejected = unlabelled[1]
    page.locator(f'#predicted .face-card[data-face-id="{rejected}"] button.reject').click()
    page.locator(f'#rejected .face-card[data-face-id="{rejected}"]').wait_for()
    shoot(page, test_output_dir, "persona-after-verdicts")

    # Model versions: an active one with metrics; train again and roll back to the first.
    page.goto("/#/models")
    page.locator("#models tr .tag.active").wait_for(timeout=LIVE_SECONDS * 1000)
    shoot(page, test_output_dir, "models")
    versions = page.locator("#models tbody tr")
    if versions.count() < 2:
        page.click("button:has-text('Train now')")
        poll(page, lambda: page.locator("#models tbody tr").count() >= 2, LIVE_SECONDS)
    # Activate another version, then roll back to the one that was active.
    was_active = page.locator("#models tbody tr", has=page.locator(".tag.active")).get_attribute("data-version")
    other = page.locator("#models tbody tr", has_not=page.locator(".tag.active")).first
    other_version = other.get_attribute("data-version")
    other.locator("button", has_text="Activate").click()
    page.locator(f'#models tr[data-version="{other_version}"] .tag.active').wait_for()
    page.locator(f'#models tr[data-version="{was_active}"] button', has_text="Activate").click()
    page.locator(f'#models tr[data-version="{was_active}"] .tag.active').wait_for()
    assert page.locator("#models .tag.active").count() == 1
    # A version activated by hand is pinned until the pin is released.
    page.locator(f'#models tr[data-version="{was_active}"] .tag.pinned').wait_for()
    assert page.locator("#models .tag.pinned").count() == 1 and "pinned" in page.locator("#pin-note").inner_text()
    shoot(page, test_output_dir, "models-rolled-back")
    page.click("#release-pin")
    page.locator("#models .tag.pinned").wait_for(state="detached")


def test_upload_an_image_and_see_its_faces_boxed(page, gateway, faces_dir, test_output_dir):
    page.goto("/#/images")
    page.set_input_files("#upload-input", str(faces_dir / "scenes/two_people.jpg"))
    link = page.locator("#upload-log a", has_text="two_people.jpg")
    link.wait_for(timeout=60_000)
    assert re.search(r"2 faces found|already uploaded", page.locator("#upload-log").inner_text())
    link.click()
    page.locator("#photo img").wait_for()
    # Live events (this upload's own) may re-render the page meanwhile, so the
    # check reads every box in one go and retries until it holds.
    poll(page, lambda: drawn_boxes(page) == 2, 30)
    assert page.locator("#photo .box").count() == 2
    shoot(page, test_output_dir, "image-boxed")


def test_errors_are_shown_to_the_user(page, gateway, test_output_dir):
    page.goto("/#/persona/no-such-persona")
    error = page.locator(".state.error")
    error.wait_for()
    assert "not found" in error.inner_text()
    page.goto("/#/")
    page.fill("#create-persona input", "   ")
    page.click("#create-persona button[type=submit]")
    page.locator(".toast.error").wait_for()
    shoot(page, test_output_dir, "error-toast")


def test_long_lists_page_with_show_more(page, mesh, faces_dir, test_output_dir):
    """A list longer than a page ends in "Show more"; what it opened stays
    open when live events refresh the view."""
    mesh.ingest_files(sorted((faces_dir / "noise").iterdir()))
    step = 3
    page.goto(f"/?pageSize={step}#/images")
    cards = page.locator("#images .image-card")
    cards.first.wait_for()
    assert cards.count() == step
    page.click("button.more")
    poll(page, lambda: cards.count() == 2 * step, LIVE_SECONDS)
    # An upload elsewhere refreshes this page live: it still shows two pages.
    live_updates_connected(page)
    rendered = page.locator("#main").get_attribute("data-ready")
    mesh.ingest_files([faces_dir / "edge/obama_small.jpg"])
    poll(page, lambda: page.locator("#main").get_attribute("data-ready") != rendered, LIVE_SECONDS)
    assert cards.count() == 2 * step
    while page.locator("button.more").count():
        page.click("button.more")
        page.wait_for_timeout(300)
    poll(page, lambda: cards.count() == mesh.store.count_images(), LIVE_SECONDS)
    shoot(page, test_output_dir, "images-all-pages")


def test_a_gate_rejection_shows_live_in_the_header_and_on_the_persona_it_affects(page, mesh, test_output_dir):
    """The trainer's outcome events (their production is tested in tests/trainer) reach the header
    and the affected persona's page live, and the header never says a version succeeded when it
    did not go live."""
    from visage.v1 import resources_pb2 as pb
    create_persona(page, "Gated")
    gated = next(p for p in mesh.store.list_personas() if p.display_name == "Gated")
    page.locator(".persona-card", has_text="Gated").click()
    page.locator("#persona-name").wait_for()
    page.evaluate("window.__noReload = true")
    live_updates_connected(page)
    mesh.store.append_event(pb.EVENT_TYPE_TRAINING_PROGRESS, "job-x", {
        "job_id": "job-x", "phase": "TRAINING_PHASE_SUCCEEDED", "done": "1", "total": "1",
        "model_version": "97", "activated": "false", "message": "version 97: rejected: …"})
    training = page.locator("#progress-training .progress-label")
    poll(page, lambda: training.inner_text() == "Training: v97 not activated", LIVE_SECONDS)
    mesh.store.append_event(pb.EVENT_TYPE_MODEL_VERSION_REJECTED, "97", {
        "reason": "rejected: 3 of 40 faces the new labels did not touch would be named worse; affected: Gated",
        "persona_ids": gated.persona_id, "active_version": "1"})
    page.locator("#gate-status", has_text="v97 rejected").wait_for(timeout=LIVE_SECONDS * 1000)
    page.locator("#rejection", has_text="Model v97 was not activated").wait_for(timeout=LIVE_SECONDS * 1000)
    assert page.evaluate("window.__noReload") is True
    shoot(page, test_output_dir, "gate-rejection")
