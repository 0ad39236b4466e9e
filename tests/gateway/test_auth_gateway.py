"""Identity at the edge, through the real Envoy: the role table against every
RPC over REST and over native gRPC (each role allowed or 403/PERMISSION_DENIED,
no token 401/UNAUTHENTICATED), refused tokens, host names other than the
configured ones refused (DNS rebinding), the UI and health still open."""
from __future__ import annotations

import http.client
import re
import socket
import sys
import time
from pathlib import Path

import grpc
import jwt
import pytest
from google.api import annotations_pb2

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "auth"))
from rpc_matrix import all_methods, call_status, expected, grpc_path, outcome  # noqa: E402

from visage.auth.roles import Role  # noqa: E402

ROLES = [None, *Role]
# A stream the check let through stays open until events come; a refusal is answered at once.
REST_STREAM_SECONDS = 3


def rest_route(method) -> tuple[str, str, bool] | None:
    """(HTTP method, path with every variable set to "1", has a body) of an RPC's REST mapping."""
    rule = method.GetOptions().Extensions[annotations_pb2.http]
    verb = rule.WhichOneof("pattern")
    if verb is None:
        return None
    path = re.sub(r"\{[^}]*\}", "1", getattr(rule, verb))
    return verb.upper(), path, bool(rule.body)


def rest_status(gateway, verb: str, path: str, body: bool, headers: dict[str, str]) -> int | str:
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=REST_STREAM_SECONDS)
    try:
        send = {"content-type": "application/json", **headers} if body else headers
        connection.request(verb, path, body=b"{}" if body else None, headers=send)
        return connection.getresponse().status
    except (socket.timeout, TimeoutError):
        return "open stream"  # let through: the service holds it open
    finally:
        connection.close()


def rest_outcome(status: int | str) -> str:
    return {401: "unauthenticated", 403: "permission_denied"}.get(status, "allowed")


def bearer(issue_token, role) -> dict[str, str]:
    return {"authorization": f"Bearer {issue_token(role, f'edge-{role.label}')}"} if role else {}


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.label if r else "anonymous")
def test_each_role_gets_exactly_its_rest_routes(role, gateway, issue_token):
    headers = bearer(issue_token, role)
    wrong = {}
    for _, method in all_methods():
        route = rest_route(method)
        if route is None:
            continue
        status = rest_status(gateway, *route, headers)
        if rest_outcome(status) != expected(role, method):
            wrong[f"{route[0]} {route[1]}"] = f"{status}, want {expected(role, method)}"
    assert wrong == {}


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.label if r else "anonymous")
def test_each_role_gets_exactly_its_rpcs_over_grpc_through_envoy(role, gateway, issue_token, plain_channel):
    metadata = list(bearer(issue_token, role).items())
    wrong = {}
    with plain_channel(f"127.0.0.1:{gateway.port}") as channel:
        for _, method in all_methods():
            code = call_status(channel, method, metadata)
            if outcome(code) != expected(role, method):
                wrong[grpc_path(method)] = f"{code.name}, want {expected(role, method)}"
    assert wrong == {}


def test_a_401_is_json_with_a_message_and_the_ui_health_and_spec_stay_open(gateway):
    status, error = gateway.json("GET", "/v1/personas", anonymous=True)
    assert status == 401 and error["message"]
    for path in ("/", "/app.js", "/healthz", "/openapi.json"):
        assert gateway.request("GET", path, anonymous=True)[0] == 200, path


@pytest.mark.parametrize("case", ["expired", "wrong issuer", "wrong audience", "alg none", "tampered", "other key"])
def test_bad_tokens_are_401_at_the_edge(gateway, test_issuer, case):
    import base64
    import json

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    now = int(time.time())
    claims = {"iss": "visage-local", "aud": "visage", "sub": "mallory", "roles": ["admin"], "iat": now, "exp": now + 600}
    b64 = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    sign = lambda c, key=test_issuer.key: jwt.encode(c, key, algorithm="EdDSA",  # noqa: E731
                                                     headers={"kid": test_issuer.key_id})
    viewer = sign({**claims, "roles": ["viewer"]}).split(".")
    token = {
        "expired": lambda: sign({**claims, "exp": now - 3600}),
        "wrong issuer": lambda: sign({**claims, "iss": "https://evil.example/"}),
        "wrong audience": lambda: sign({**claims, "aud": "another-app"}),
        "alg none": lambda: f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}.",
        "tampered": lambda: f"{viewer[0]}.{b64(claims)}.{viewer[2]}",
        "other key": lambda: sign(claims, Ed25519PrivateKey.generate()),
    }[case]()
    status, error = gateway.json("DELETE", "/v1/personas/1", headers={"authorization": f"Bearer {token}"})
    # Envoy answers a valid signature for another audience with 403 ("Audiences in Jwt are not allowed").
    assert status == (403 if case == "wrong audience" else 401) and error["message"]


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "127.0.0.1.evil.example", "10.0.0.1"])
def test_other_host_names_are_refused_even_with_a_token(gateway, host):
    """A page whose DNS name was rebound to 127.0.0.1 sends its own name as Host."""
    status, headers, body = gateway.request("GET", "/v1/personas", headers={"host": host})
    assert status == 421, body
    assert gateway.request("GET", "/", headers={"host": host}, anonymous=True)[0] == 421


def test_the_configured_names_with_any_port_are_served(gateway):
    for host in ("127.0.0.1", "localhost", f"localhost:{gateway.port}"):
        assert gateway.request("GET", "/v1/personas", headers={"host": host})[0] == 200, host


def test_anonymous_grpc_through_envoy_is_unauthenticated(gateway, plain_channel):
    from visage.v1 import query_pb2, query_pb2_grpc
    with plain_channel(f"127.0.0.1:{gateway.port}") as channel:
        with pytest.raises(grpc.RpcError) as refused:
            query_pb2_grpc.QueryServiceStub(channel).ListPersonas(query_pb2.ListPersonasRequest(), timeout=30)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
