"""Tokens the services refuse (expired, wrong issuer, wrong audience, `alg:
none`, tampered, signed by another key, no role) and the ones they accept; the
local issuer and `visage token create`."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys
import time
from concurrent import futures

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from visage.auth.interceptor import AuthInterceptor
from visage.auth.local import LocalIssuer, parse_ttl
from visage.auth.roles import Role
from visage.auth.tokens import AuthConfig, AuthError, TokenVerifier
from visage.loopback import free_port
from visage.v1 import query_pb2, query_pb2_grpc
from visage.v1 import resources_pb2 as pb


@pytest.fixture
def verifier(test_issuer) -> TokenVerifier:
    return TokenVerifier(test_issuer.config)


def claims(**overrides) -> dict:
    now = int(time.time())
    base = {"iss": "visage-local", "aud": "visage", "sub": "ann", "roles": ["labeller"], "iat": now, "exp": now + 600}
    return {key: value for key, value in {**base, **overrides}.items() if value is not None}


def signed(test_issuer, **overrides) -> str:
    return jwt.encode(claims(**overrides), test_issuer.key, algorithm="EdDSA", headers={"kid": test_issuer.key_id})


def b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def refusal(verifier, token) -> AuthError:
    with pytest.raises(AuthError) as refused:
        verifier.verify(token)
    return refused.value


def test_a_valid_token_names_its_subject_and_highest_role(verifier, test_issuer):
    identity = verifier.verify(signed(test_issuer, roles=["viewer", "operator", "someone-elses-role"]))
    assert (identity.subject, identity.role) == ("ann", Role.OPERATOR)
    assert verifier.verify(signed(test_issuer, roles="admin")).role == Role.ADMIN  # one string works too


@pytest.mark.parametrize("case, overrides, says", [
    ("expired", {"exp": int(time.time()) - 3600}, "expired"),
    ("wrong issuer", {"iss": "https://evil.example/"}, "issuer"),
    ("wrong audience", {"aud": "another-app"}, "audience"),
    ("no expiry", {"exp": None}, "exp"),
    ("no subject", {"sub": None}, "sub"),
])
def test_tokens_with_bad_claims_are_unauthenticated(verifier, test_issuer, case, overrides, says):
    error = refusal(verifier, signed(test_issuer, **overrides))
    assert error.status == "unauthenticated" and says in error.message.lower(), case


def test_alg_none_is_refused(verifier, test_issuer):
    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT', 'kid': test_issuer.key_id})}.{b64(claims(roles=['admin']))}."
    assert refusal(verifier, unsigned).status == "unauthenticated"


def test_a_tampered_token_is_refused(verifier, test_issuer):
    header, _payload, signature = signed(test_issuer, roles=["viewer"]).split(".")
    promoted = f"{header}.{b64(claims(roles=['admin']))}.{signature}"
    assert refusal(verifier, promoted).status == "unauthenticated"


def test_a_token_signed_by_another_key_is_refused(verifier, test_issuer):
    other = jwt.encode(claims(), Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": test_issuer.key_id})
    assert refusal(verifier, other).status == "unauthenticated"
    unknown_kid = jwt.encode(claims(), test_issuer.key, algorithm="EdDSA", headers={"kid": "nope"})
    assert refusal(verifier, unknown_kid).status == "unauthenticated"


def test_a_symmetric_token_made_with_the_public_key_is_refused(verifier, test_issuer):
    public_key = test_issuer.jwks()["keys"][0]["x"].encode()  # known to everyone
    signing_input = f"{b64({'alg': 'HS256', 'kid': test_issuer.key_id})}.{b64(claims(roles=['admin']))}"
    mac = hmac.new(public_key, signing_input.encode(), hashlib.sha256).digest()
    forged = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    assert refusal(verifier, forged).status == "unauthenticated"


def test_a_token_without_a_visage_role_is_permission_denied(verifier, test_issuer):
    assert refusal(verifier, signed(test_issuer, roles=["Directory.Reader"])).status == "permission_denied"
    assert refusal(verifier, signed(test_issuer, roles=None)).status == "permission_denied"


def test_missing_or_garbage_token_is_unauthenticated(verifier):
    for token in (None, "", "not-a-jwt", "a.b.c", "Basic dXNlcjpwdw=="):
        assert refusal(verifier, token).status == "unauthenticated", token


def test_the_role_and_subject_claims_are_configurable(test_issuer):
    config = AuthConfig(role_claim="app_roles", subject_claim="preferred_username", local_dir=test_issuer.dir)
    identity = TokenVerifier(config).verify(signed(test_issuer, app_roles=["admin"], roles=None,
                                                   preferred_username="ann@contoso.example"))
    assert (identity.subject, identity.role) == ("ann@contoso.example", Role.ADMIN)


@pytest.mark.parametrize("case", ["expired", "wrong issuer", "wrong audience", "alg none", "tampered"])
def test_services_refuse_bad_tokens_over_grpc(services, plain_channel, test_issuer, case):
    token = {
        "expired": lambda: signed(test_issuer, exp=int(time.time()) - 3600),
        "wrong issuer": lambda: signed(test_issuer, iss="https://evil.example/"),
        "wrong audience": lambda: signed(test_issuer, aud="another-app"),
        "alg none": lambda: f"{b64({'alg': 'none'})}.{b64(claims(roles=['admin']))}.",
        "tampered": lambda: ".".join([signed(test_issuer).split(".")[0], b64(claims(roles=["admin"])),
                                      signed(test_issuer).split(".")[2]]),
    }[case]()
    with plain_channel(f"127.0.0.1:{services.ports['query']}") as channel:
        with pytest.raises(grpc.RpcError) as refused:
            query_pb2_grpc.QueryServiceStub(channel).ListPersonas(
                query_pb2.ListPersonasRequest(), timeout=30, metadata=[("authorization", f"Bearer {token}")])
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_the_local_issuer_makes_one_private_key_and_keeps_it(tmp_path):
    config = AuthConfig(local_dir=tmp_path / "auth")
    first = LocalIssuer(config).ensure()
    again = LocalIssuer(config).ensure()
    assert first.key_id == again.key_id
    assert stat.S_IMODE(os.stat(first.key_path).st_mode) == 0o600
    token = again.mint(Role.VIEWER, "vic", ttl_seconds=60)
    assert TokenVerifier(config).verify(token).subject == "vic"


def test_ttl_parsing():
    assert [parse_ttl(t) for t in ("90s", "30m", "8h", "7d", "120")] == [90, 1800, 28800, 604800, 120]
    for bad in ("", "soon", "-1h", "0"):
        with pytest.raises(ValueError):
            parse_ttl(bad)


def test_visage_token_create_prints_a_token_as_its_last_line(services, plain_channel):
    env = {k: v for k, v in os.environ.items() if k != "VISAGE_TOKEN"}
    result = subprocess.run([sys.executable, "-m", "visage.cli", "token", "create", "--role", "viewer",
                             "--subject", "vera", "--ttl", "30m"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    token = result.stdout.splitlines()[-1]
    assert token == token.strip() and token.count(".") == 2
    with plain_channel(f"127.0.0.1:{services.ports['query']}") as channel:
        stub = query_pb2_grpc.QueryServiceStub(channel)
        stub.ListPersonas(query_pb2.ListPersonasRequest(), timeout=30, metadata=[("authorization", f"Bearer {token}")])
        with pytest.raises(grpc.RpcError) as refused:
            stub.CreatePersona(query_pb2.CreatePersonaRequest(persona=pb.Persona(display_name="x")), timeout=30,
                               metadata=[("authorization", f"Bearer {token}")])
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_visage_token_create_without_a_local_key_says_what_to_do(tmp_path):
    env = dict(os.environ, VISAGE_AUTH_DIR=str(tmp_path / "none"))
    result = subprocess.run([sys.executable, "-m", "visage.cli", "token", "create", "--role", "admin"],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "make run" in result.stderr and result.stdout == ""


def test_an_unreachable_issuer_is_unavailable_not_a_bad_token(test_issuer):
    """With an external issuer whose keys cannot be fetched, a well-formed token
    is neither accepted nor called invalid: UNAVAILABLE tells the caller to retry."""
    keys_url = f"http://127.0.0.1:{free_port()}/keys"  # nobody listens on it
    config = AuthConfig(jwks_url=keys_url, local_dir=test_issuer.dir)
    verifier = TokenVerifier(config)
    assert refusal(verifier, signed(test_issuer)).status == "unavailable"

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=[AuthInterceptor(verifier)])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "visage.v1.QueryService", {"ListPersonas": grpc.unary_unary_rpc_method_handler(
            lambda request, context: b"", request_deserializer=None, response_serializer=None)})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/visage.v1.QueryService/ListPersonas")
            with pytest.raises(grpc.RpcError) as refused:
                call(b"", timeout=30, metadata=[("authorization", f"Bearer {signed(test_issuer)}")])
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "cannot be fetched" in refused.value.details()
    finally:
        server.stop(None)
