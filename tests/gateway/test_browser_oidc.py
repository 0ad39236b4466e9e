"""Signing in to the UI with the organisation's OpenID Connect provider (issue 24), in Debian's
Chromium, against a real provider started here: Keycloak (scripts/keycloak.py, from Maven Central)
on localhost, with users whose realm roles it puts in the tokens' `roles` claim, as Entra ID puts
app roles. The mesh and Envoy trust only that provider (VISAGE_AUTH_*), and the UI is told about it
(VISAGE_UI_OIDC_*): "Sign in with Keycloak", the provider's own login page, back signed in with the
role the token names; tokens only in the tab's sessionStorage; a refresh-token renewal; a renewal
the provider refuses leads to a clear re-sign-in."""
from __future__ import annotations

import importlib.util
import json
import sys

import grpc
import pytest
from visage.loopback import free_port
from gateway_stack import REPO, patient, start_gateway
from test_browser import browser  # noqa: F401  (the module's Chromium fixture)

from tests.conftest import missing_prerequisite
from tests.waiting import wait_until
from visage.config import Config
from visage.mesh import start_in_process
from visage.store import open_store
from visage.v1 import query_pb2, query_pb2_grpc, resources_pb2
from visage_trainer.training import TrainerSettings

pytestmark = pytest.mark.browser

CLIENT_ID = "visage-ui"
PASSWORDS = {"larry": "larry-pass-1", "vera": "vera-pass-1"}
OIDC_USER_KEY = "Object.keys(sessionStorage).find((key) => key.startsWith('oidc.user:'))"
# Renewal is due a minute before the access token (300 s) expires; the page's clock jumps there.
PAST_RENEWAL = "04:10"


def _load_keycloak_script():
    spec = importlib.util.spec_from_file_location("visage_keycloak_script", REPO / "scripts" / "keycloak.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


keycloak_script = _load_keycloak_script()


@pytest.fixture(scope="module")
def gateway_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def keycloak(tmp_path_factory, gateway_port):
    if reason := keycloak_script.missing():
        missing_prerequisite(reason, "make keycloak")
    users = [keycloak_script.User("larry", PASSWORDS["larry"], ["labeller"]),
             keycloak_script.User("vera", PASSWORDS["vera"], ["viewer"])]
    server = keycloak_script.LocalKeycloak(tmp_path_factory.mktemp("keycloak"), CLIENT_ID,
                                           [f"http://127.0.0.1:{gateway_port}/"], users).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def trusting_keycloak(keycloak) -> dict[str, str]:
    """VISAGE_AUTH_* of a mesh whose tokens come from the provider, roles in `roles`."""
    return {"VISAGE_AUTH_ISSUER": keycloak.issuer, "VISAGE_AUTH_JWKS_URL": keycloak.jwks_url,
            "VISAGE_AUTH_AUDIENCE": keycloak.audience, "VISAGE_AUTH_ROLE_CLAIM": "roles",
            "VISAGE_AUTH_SUBJECT_CLAIM": "preferred_username"}


@pytest.fixture(scope="module")
def oidc_mesh(trusting_keycloak, tmp_path_factory):
    """The four services, each checking tokens against the provider (read when they start)."""
    config = Config(data_dir=tmp_path_factory.mktemp("oidc-data"), workers=1)
    store = open_store(config)
    with pytest.MonkeyPatch.context() as env:
        for name, value in trusting_keycloak.items():
            env.setenv(name, value)
        services = start_in_process(config, store, trainer_settings=TrainerSettings(debounce_seconds=1.0))
    with services:
        yield services
    store.close()


@pytest.fixture(scope="module")
def oidc_gateway(oidc_mesh, trusting_keycloak, gateway_port, tmp_path_factory):
    gateway = start_gateway(oidc_mesh.ports, tmp_path_factory.mktemp("oidc-gateway"), {
        **trusting_keycloak, "VISAGE_UI_OIDC_CLIENT_ID": CLIENT_ID, "VISAGE_UI_OIDC_PROVIDER_NAME": "Keycloak",
        # No offline_access: Keycloak's offline tokens outlive a sign-out at the provider.
        "VISAGE_UI_OIDC_SCOPES": "openid profile"}, port=gateway_port)
    yield gateway
    gateway.stop()


@pytest.fixture
def new_context(browser, oidc_gateway):  # noqa: F811
    contexts = []

    def make():
        context = patient(browser.new_context(base_url=oidc_gateway.url, viewport={"width": 1280, "height": 900}))
        context.errors = []
        context.on("weberror", lambda error: context.errors.append(str(error.error)))
        contexts.append(context)
        return context

    yield make
    for context in contexts:
        assert not context.errors, f"JavaScript errors: {context.errors}"
        context.close()


def sign_in_at_keycloak(page, keycloak, username: str) -> None:
    """From the UI's sign-in page, through the provider's login page, back to the UI."""
    page.click("#oidc-sign-in")
    page.wait_for_url(f"{keycloak.issuer}/**")
    page.fill("#username", username)
    page.fill("#password", PASSWORDS[username])
    page.click("#kc-login")
    page.locator("#whoami-name", has_text=username).wait_for()


def stored_tokens(page) -> dict:
    return json.loads(page.evaluate(f"sessionStorage.getItem({OIDC_USER_KEY})"))


def create_persona_status(page, token: str, name: str) -> int:
    return page.evaluate("""async ([token, name]) => (await fetch('/v1/personas', {method: 'POST',
        headers: {authorization: `Bearer ${token}`, 'content-type': 'application/json'},
        body: JSON.stringify({displayName: name})})).status""", [token, name])


def direct_create_persona(oidc_mesh, token: str, name: str) -> grpc.StatusCode:
    with grpc.insecure_channel(f"127.0.0.1:{oidc_mesh.ports['query']}") as channel:
        try:
            query_pb2_grpc.QueryServiceStub(channel).CreatePersona(
                query_pb2.CreatePersonaRequest(persona=resources_pb2.Persona(display_name=name)), timeout=120,
                metadata=(("authorization", f"Bearer {token}"),))
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def test_people_sign_in_at_the_provider_and_get_the_role_its_token_names(new_context, keycloak, oidc_mesh,
                                                                          test_output_dir):
    # A labeller: the provider's login page, back signed in, may create a persona.
    context = new_context()
    page = context.new_page()
    page.goto("/#/")
    assert page.evaluate("oidc.Version") == "3.5.0"  # the vendored, pinned library (mk/gateway.mk)
    page.locator("#oidc-sign-in", has_text="Sign in with Keycloak").wait_for()
    page.screenshot(path=str(test_output_dir / "gateway-oidc-sign-in.png"), full_page=True)
    sign_in_at_keycloak(page, keycloak, "larry")
    assert page.locator("#whoami-role").inner_text() == "labeller"
    assert "code=" not in page.url and "state=" not in page.url  # the code left the address bar
    page.fill("#create-persona input", "Penny")
    page.click("#create-persona button[type=submit]")
    page.locator(".persona-card .name", has_text="Penny").wait_for()
    labeller_token = stored_tokens(page)["access_token"]
    assert direct_create_persona(oidc_mesh, labeller_token, "Amy") == grpc.StatusCode.OK  # both doors agree

    # A viewer: sees the personas, is not offered what a viewer may not do, and is refused it.
    viewer = new_context().new_page()
    viewer.goto("/#/")
    sign_in_at_keycloak(viewer, keycloak, "vera")
    assert viewer.locator("#whoami-role").inner_text() == "viewer"
    viewer.locator(".persona-card .name", has_text="Penny").wait_for()
    assert viewer.locator("#create-persona").count() == 0
    viewer.screenshot(path=str(test_output_dir / "gateway-oidc-viewer.png"), full_page=True)
    tokens = stored_tokens(viewer)
    assert create_persona_status(viewer, tokens["access_token"], "Mallory") == 403
    assert direct_create_persona(oidc_mesh, tokens["access_token"], "Mallory") == grpc.StatusCode.PERMISSION_DENIED

    # The tokens live in the tab's sessionStorage only: nothing in localStorage, no cookie holds one,
    # and the UI's own site has no cookie at all.
    for tab in (page, viewer):
        assert tab.evaluate("Object.keys(localStorage)") == []
        assert tab.context.cookies(tab.url) == []
        cookies = tab.evaluate("document.cookie") + json.dumps(tab.context.cookies())
        stored = stored_tokens(tab)
        for kind in ("access_token", "refresh_token", "id_token"):
            assert stored[kind] and stored[kind] not in cookies, kind

    # Reloading keeps the session (sessionStorage); signing out forgets it.
    viewer.reload()
    viewer.locator("#whoami-name", has_text="vera").wait_for()
    viewer.click("#sign-out")
    viewer.locator("#oidc-sign-in").wait_for()
    assert viewer.evaluate(OIDC_USER_KEY) is None


def test_the_access_token_is_renewed_silently_before_it_expires(new_context, keycloak):
    page = new_context().new_page()
    page.goto("/#/")
    sign_in_at_keycloak(page, keycloak, "vera")
    first = stored_tokens(page)["access_token"]
    page.clock.install()  # the page's timers from now on, so the renewal's moment can be reached at once
    page.reload()
    page.locator("#whoami-name", has_text="vera").wait_for()
    page.clock.fast_forward(PAST_RENEWAL)
    # (Polled from here: the page's Content-Security-Policy refuses the eval of wait_for_function.)
    renewed = wait_until(lambda: (token := stored_tokens(page)["access_token"]) != first and token,
                         "a renewed access token")
    page.goto("/#/images")  # the page goes on with the new token
    page.locator("#main h1", has_text="Images").wait_for()
    assert page.locator("#whoami-name").inner_text() == "vera"
    assert create_persona_status(page, renewed, "Raj") == 403  # accepted (a viewer's 403), not 401


def test_a_renewal_the_provider_refuses_leads_to_a_clear_sign_in_again(new_context, keycloak, test_output_dir):
    page = new_context().new_page()
    page.goto("/#/unknown")
    sign_in_at_keycloak(page, keycloak, "larry")
    page.clock.install()
    page.reload()
    page.locator("#whoami-name", has_text="larry").wait_for()
    keycloak.end_sessions_of("larry")  # e.g. an administrator signed them out everywhere
    page.clock.fast_forward(PAST_RENEWAL)
    message = page.locator("#sign-in-message")
    message.wait_for()
    assert "could not be renewed" in message.inner_text() and "sign in again" in message.inner_text()
    assert page.locator("#whoami-name").count() == 0
    assert page.evaluate(OIDC_USER_KEY) is None  # the refused session's tokens are gone
    page.screenshot(path=str(test_output_dir / "gateway-oidc-renewal-refused.png"), full_page=True)
    sign_in_at_keycloak(page, keycloak, "larry")  # the provider asks for the password again
    page.locator("#main h1", has_text="Unknown").wait_for()  # back where they were
