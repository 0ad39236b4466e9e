"""One reading of the role claim at both doors (issue 25, finding 5): exact names
only, no trimming, no case folding, unknown names ignored. The services used to
take ["admin "], [" admin"], "viewer\\tadmin" and ["admın"] (dotless ı) as admin
over direct gRPC where the gateway said 403. DeleteImage of an image that does
not exist: an admin gets NOT_FOUND / 404, anyone else PERMISSION_DENIED / 403."""
from __future__ import annotations

import time

import grpc
import jwt
import pytest

from visage.v1 import query_pb2, query_pb2_grpc

NOT_ADMIN = [["admin "], [" admin"], "viewer\tadmin", ["admın"], ["ADMIN"], "Admin", ["admin\n"], "admin;viewer"]
ADMIN = [["admin"], "admin", "viewer admin", "viewer,admin", ["viewer", "admin"], ["other-app-role", "admin"]]


def token_with(test_issuer, roles) -> str:
    now = int(time.time())
    return jwt.encode({"iss": "visage-local", "aud": "visage", "sub": "mallory", "roles": roles, "iat": now,
                       "exp": now + 600}, test_issuer.key, algorithm="EdDSA", headers={"kid": test_issuer.key_id})


def direct_code(mesh, plain_channel, token: str) -> grpc.StatusCode:
    with plain_channel(f"127.0.0.1:{mesh.ports['query']}") as channel:
        with pytest.raises(grpc.RpcError) as refused:
            query_pb2_grpc.QueryServiceStub(channel).DeleteImage(
                query_pb2.DeleteImageRequest(image_id="no-such-image"), timeout=120,
                metadata=(("authorization", f"Bearer {token}"),))
    return refused.value.code()


@pytest.mark.parametrize("roles", NOT_ADMIN, ids=repr)
def test_a_near_admin_role_claim_is_not_admin_at_either_door(mesh, gateway, plain_channel, test_issuer, roles):
    token = token_with(test_issuer, roles)
    assert direct_code(mesh, plain_channel, token) == grpc.StatusCode.PERMISSION_DENIED
    status, _, body = gateway.request("DELETE", "/v1/images/no-such-image",
                                      headers={"authorization": f"Bearer {token}"})
    assert status == 403, body


@pytest.mark.parametrize("roles", ADMIN, ids=repr)
def test_an_exact_admin_role_claim_is_admin_at_both_doors(mesh, gateway, plain_channel, test_issuer, roles):
    token = token_with(test_issuer, roles)
    assert direct_code(mesh, plain_channel, token) == grpc.StatusCode.NOT_FOUND
    status, _, body = gateway.request("DELETE", "/v1/images/no-such-image",
                                      headers={"authorization": f"Bearer {token}"})
    assert status == 404, body
