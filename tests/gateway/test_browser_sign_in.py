"""Signing in to the UI in Debian's Chromium, through the real Envoy: the login
link `make run` prints, a pasted token, what each role is shown, signing out,
and a refused token leading back to the sign-in page."""
from __future__ import annotations

import pytest
from gateway_stack import patient, start_gateway
from test_browser import CHROMIUM_ARGS, browser  # noqa: F401  (the module's Chromium fixture)

pytestmark = pytest.mark.browser


@pytest.fixture
def new_page(browser, gateway):  # noqa: F811
    contexts = []

    def make():
        context = patient(browser.new_context(base_url=gateway.url, viewport={"width": 1280, "height": 900}))
        contexts.append(context)
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        return page

    yield make
    for context in contexts:
        assert not [e for p in context.pages for e in p.errors], "JavaScript errors"
        context.close()


def test_login_link_signs_in_and_leaves_no_token_in_the_address_bar(new_page, issue_token, test_output_dir):
    page = new_page()
    page.goto(f"/#token={issue_token('labeller', 'leonard')}")
    page.locator("#whoami-name", has_text="leonard").wait_for()
    assert page.locator("#whoami-role").inner_text() == "labeller"
    assert "token=" not in page.url
    page.locator("#create-persona").wait_for()  # labellers create personas
    page.screenshot(path=str(test_output_dir / "gateway-signed-in.png"), full_page=True)


def test_sign_in_with_a_pasted_token_then_sign_out(new_page, issue_token, test_output_dir):
    page = new_page()
    page.goto("/#/")
    page.locator("#sign-in").wait_for()
    page.screenshot(path=str(test_output_dir / "gateway-sign-in.png"), full_page=True)
    page.fill("#token-input", issue_token("viewer", "vera"))
    page.click("#sign-in button[type=submit]")
    page.locator("#whoami-name", has_text="vera").wait_for()
    page.locator("#main h1", has_text="Personas").wait_for()
    assert page.locator("#create-persona").count() == 0  # a viewer is not offered what it may not do
    page.goto("/#/models")
    page.locator("#main h1", has_text="Models").wait_for()
    assert page.locator("button", has_text="Train now").count() == 0
    page.goto("/#/unknown")  # the people tools (naming, bulk select, hide) are for labellers
    page.locator("#main h1", has_text="Unknown").wait_for()
    assert page.locator("#assign-selected, #hide-selected, .cluster-card input").count() == 0
    page.click("#sign-out")
    page.locator("#sign-in").wait_for()
    assert page.evaluate("sessionStorage.getItem('visage.token')") is None


def test_a_refused_token_leads_back_to_sign_in(new_page, test_issuer):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    import time
    import jwt
    now = int(time.time())
    forged = jwt.encode({"iss": "visage-local", "aud": "visage", "sub": "mallory", "roles": ["admin"],
                         "iat": now, "exp": now + 600}, Ed25519PrivateKey.generate(), algorithm="EdDSA",
                        headers={"kid": test_issuer.key_id})
    page = new_page()
    page.goto("/#/")
    page.locator("#sign-in").wait_for()
    page.fill("#token-input", forged)
    page.click("#sign-in button[type=submit]")
    message = page.locator("#sign-in-message")
    message.wait_for()
    assert "did not accept your token" in message.inner_text()
    assert page.locator("#whoami-name").count() == 0


def test_a_token_refused_mid_session_leads_back_to_sign_in(new_page, issue_token):
    page = new_page()
    page.goto(f"/#token={issue_token('viewer', 'vic')}")
    page.locator("#whoami-name", has_text="vic").wait_for()
    # The token stops being accepted (here: replaced by one the gateway refuses).
    page.evaluate("sessionStorage.setItem('visage.token', sessionStorage.getItem('visage.token') + 'x')")
    page.goto("/#/images")
    page.locator("#sign-in-message").wait_for()


def test_a_signed_in_labeller_sees_their_name_on_the_label(new_page, issue_token, mesh, faces_dir, test_output_dir):
    """The README's first steps: open the link, label a face, see your name on the label."""
    photo = sorted((faces_dir / "bbt/howard").iterdir())[0]
    [face_id] = mesh.ingest_files([photo])[photo]
    page = new_page()
    page.goto(f"/#token={issue_token('labeller', 'leonard')}")
    page.fill("#create-persona input", "Howard")
    page.click("#create-persona button[type=submit]")
    page.locator(".persona-card .name", has_text="Howard").wait_for()
    page.goto("/#/unknown")
    card = page.locator(f'.face-card[data-face-id="{face_id}"]')
    card.locator("select").select_option(label="Howard")
    card.locator("button", has_text="Assign").click()
    card.wait_for(state="detached")
    page.goto("/#/")
    page.locator(".persona-card", has_text="Howard").click()
    labelled = page.locator(f'#labelled .face-card[data-face-id="{face_id}"] .meta')
    labelled.wait_for()
    assert labelled.inner_text() == "labelled by leonard"
    page.screenshot(path=str(test_output_dir / "gateway-labelled-by.png"), full_page=True)


def test_the_page_reads_the_role_from_the_claim_the_gateway_is_configured_with(browser, mesh, test_issuer,  # noqa: F811
                                                                                tmp_path_factory):
    """VISAGE_AUTH_ROLE_CLAIM=app_roles: a token whose `app_roles` says viewer is shown as a viewer,
    whatever its `roles` claim says (the gateway judges by app_roles; the page must agree)."""
    import time

    import jwt

    gateway = start_gateway(mesh.ports, tmp_path_factory.mktemp("gateway-app-roles"),
                            {"VISAGE_AUTH_ROLE_CLAIM": "app_roles", "VISAGE_AUTH_SUBJECT_CLAIM": "upn"})
    try:
        now = int(time.time())
        token = jwt.encode({"iss": "visage-local", "aud": "visage", "sub": "id-77", "upn": "una@contoso.example",
                            "app_roles": ["viewer"], "roles": ["admin"], "iat": now, "exp": now + 600},
                           test_issuer.key, algorithm="EdDSA", headers={"kid": test_issuer.key_id})
        context = patient(browser.new_context(base_url=gateway.url, viewport={"width": 1280, "height": 900}))
        page = context.new_page()
        page.goto(f"/#token={token}")
        page.locator("#whoami-name", has_text="una@contoso.example").wait_for()
        assert page.locator("#whoami-role").inner_text() == "viewer"
        page.locator("#main h1", has_text="Personas").wait_for()
        assert page.locator("#create-persona").count() == 0
        context.close()
    finally:
        gateway.stop()


def test_a_login_link_can_name_the_page_it_opens(new_page, issue_token):
    """`VISAGE_RUN_OPEN=/unknown make run` prints a link ending `&open=/unknown` (issue 28)."""
    page = new_page()
    page.goto(f"/#token={issue_token('labeller', 'leonard')}&open=/unknown")
    page.locator("#whoami-name", has_text="leonard").wait_for()
    page.locator("#main h1", has_text="Unknown").wait_for()
    assert page.url.endswith("#/unknown") and "token=" not in page.url
