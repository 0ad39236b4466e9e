"""The UI's OpenID Connect sign-in as the gateway configures it (issue 24): what /ui-config.json
tells the page, the page's Content-Security-Policy, the vendored library and the issuer URLs
that are refused. The browser flow against a real provider: test_browser_oidc.py."""
from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path

import pytest

from visage.auth.tokens import AuthConfig, TokenVerifier
from visage.config import Config
from visage_gateway import envoy_config
from visage_gateway.supervisor import envoy_command

REPO = Path(__file__).resolve().parents[2]
VENDOR = REPO / "services/gateway/ui/vendor"
ENTRA = {"VISAGE_AUTH_ISSUER": "https://login.microsoftonline.com/tenant-1/v2.0",
         "VISAGE_AUTH_JWKS_URL": "https://login.microsoftonline.com/tenant-1/discovery/v2.0/keys",
         "VISAGE_AUTH_AUDIENCE": "api://visage", "VISAGE_UI_OIDC_CLIENT_ID": "11111111-2222-3333-4444-555555555555",
         "VISAGE_UI_OIDC_SCOPES": "openid profile offline_access api://visage/.default",
         "VISAGE_UI_OIDC_PROVIDER_NAME": "Microsoft"}


def settings(env: dict[str, str]) -> envoy_config.GatewaySettings:
    return envoy_config.GatewaySettings.from_config(Config(), env)


def static_route_headers(gateway_settings, url: str) -> dict[str, str]:
    [route] = [r for r in envoy_config._static_routes(gateway_settings) if r.name == url]
    return {h.header.key: h.header.value for h in route.response_headers_to_add}


def test_without_a_client_id_the_page_offers_no_provider_and_calls_only_its_own_origin():
    plain = settings({})
    assert "signIn" not in envoy_config.ui_config(plain)
    assert "connect-src 'self';" in static_route_headers(plain, "/")["content-security-policy"]


def test_with_entra_id_the_page_is_told_the_provider_and_may_call_it():
    entra = settings(ENTRA)
    assert envoy_config.ui_config(entra)["signIn"] == {
        "authority": "https://login.microsoftonline.com/tenant-1/v2.0",  # VISAGE_AUTH_ISSUER by default
        "clientId": ENTRA["VISAGE_UI_OIDC_CLIENT_ID"], "scope": ENTRA["VISAGE_UI_OIDC_SCOPES"],
        "providerName": "Microsoft"}
    for url in ("/", "/app.js", "/vendor/oidc-client-ts.min.js"):
        policy = static_route_headers(entra, url)["content-security-policy"]
        assert "connect-src 'self' https://login.microsoftonline.com;" in policy
        assert "script-src 'self';" in policy  # the library is served from here, never from a CDN


def test_the_authority_can_differ_from_the_issuer():
    other = settings({**ENTRA, "VISAGE_UI_OIDC_AUTHORITY": "https://id.example.org/realms/staff/"})
    assert envoy_config.ui_config(other)["signIn"]["authority"] == "https://id.example.org/realms/staff"


@pytest.mark.parametrize("variable, url", [
    ("VISAGE_UI_OIDC_AUTHORITY", "http://id.example.org/realms/staff"),
    ("VISAGE_AUTH_JWKS_URL", "http://id.example.org/keys"),
    ("VISAGE_UI_OIDC_AUTHORITY", "id.example.org"),
])
def test_an_issuer_url_over_plain_http_to_another_machine_is_refused(variable, url):
    with pytest.raises(ValueError, match=variable):
        envoy_config.build_bootstrap(settings({**ENTRA, variable: url}))


def test_the_services_refuse_keys_over_plain_http_to_another_machine_too():
    with pytest.raises(ValueError, match="VISAGE_AUTH_JWKS_URL"):
        TokenVerifier(AuthConfig(issuer="https://id.example.org", jwks_url="http://id.example.org/keys"))


def test_a_provider_on_this_machine_may_speak_plain_http():
    local = settings({**ENTRA, "VISAGE_AUTH_ISSUER": "http://localhost:8180/realms/visage",
                      "VISAGE_AUTH_JWKS_URL": "http://localhost:8180/realms/visage/protocol/openid-connect/certs"})
    [jwks] = [c for c in envoy_config.build_bootstrap(local)["staticResources"]["clusters"]
              if c["name"] == envoy_config.JWKS_CLUSTER]
    assert "transportSocket" not in jwks
    assert jwks["loadAssignment"]["endpoints"][0]["lbEndpoints"][0]["endpoint"]["address"]["socketAddress"] == {
        "address": "localhost", "portValue": 8180}


def test_the_vendored_library_is_the_pinned_release_unchanged():
    """services/gateway/ui/vendor holds oidc-client-ts's browser bundle exactly as npm serves the
    version mk/gateway.mk pins (`make ui-vendor` writes both), with its licences."""
    sums = dict(reversed(line.split("  ")) for line in (VENDOR / "SHA256SUMS").read_text().splitlines())
    assert set(sums) == {"oidc-client-ts.min.js", "LICENSE.oidc-client-ts", "LICENSE.jwt-decode"}
    for name, digest in sums.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == digest, f"{name} was changed by hand"
    pinned = re.search(r"^OIDC_CLIENT_TS_VERSION\s*:=\s*(\S+)", (REPO / "mk/gateway.mk").read_text(), re.M).group(1)
    assert f'="{pinned}"' in (VENDOR / "oidc-client-ts.min.js").read_text()  # the bundle's own `Version`
    assert "Apache License" in (VENDOR / "LICENSE.oidc-client-ts").read_text()


def test_the_page_loads_the_vendored_library_before_the_app():
    page = (REPO / "services/gateway/ui/index.html").read_text()
    assert page.index('src="/vendor/oidc-client-ts.min.js"') < page.index('src="/app.js"')


def test_envoy_validates_the_config_with_sign_in_and_a_provider_on_this_machine(tmp_path):
    local = settings({**ENTRA, "VISAGE_AUTH_ISSUER": "http://localhost:8180/realms/visage",
                      "VISAGE_AUTH_JWKS_URL": "http://localhost:8180/realms/visage/protocol/openid-connect/certs"})
    path = envoy_config.write_bootstrap(local, tmp_path / "envoy.json")
    result = subprocess.run(envoy_command(path, "validate"), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "OK" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
