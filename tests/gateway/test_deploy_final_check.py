"""The AKS deploy's last check (deploy/aks/visage_deploy/final_check.py) against the real gateway
and mesh, set up as the deploy sets up the gateway pod: TLS from ONE PEM file holding the key and the
certificate chain (what the Key Vault CSI driver mounts for a certificate), the public host name in
VISAGE_GATEWAY_HOSTNAMES, and plain http on a second port redirecting to https. The check reaches
the name through 127.0.0.1 (connect_to), as DNS would send it to the static IP."""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from gateway_stack import start_gateway

from tests.deploy.fake_azure import certificate, pem_of
from visage.loopback import free_port

from visage_deploy import final_check
from visage_deploy.errors import DeployError

HOST = "visage-test.westeurope.cloudapp.azure.com"
SHARED_FACES = Path(__file__).resolve().parents[3] / "shared" / "data" / "faces"


def key_vault_style_pem(directory: Path, name: str) -> tuple[Path, str]:
    """A self-signed certificate for `name` (and 127.0.0.1, for the test stack's own readiness
    probe) written as Key Vault's PEM secret: the key, then the certificate. Returns the file and
    the certificate alone (what the deploy reads from Key Vault and pins)."""
    key, cert = certificate(name, [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    path = directory / "tls.pem"
    path.write_text(pem_of(key, cert))
    return path, cert.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def deployed_gateway(mesh, tmp_path_factory):
    directory = tmp_path_factory.mktemp("deployed-gateway")
    pem, cert_pem = key_vault_style_pem(directory, HOST)
    redirect_port = free_port()
    gateway = start_gateway(mesh.ports, directory / "data", {
        "VISAGE_GATEWAY_TLS_CERT": str(pem), "VISAGE_GATEWAY_TLS_KEY": str(pem),
        "VISAGE_GATEWAY_HOSTNAMES": HOST, "VISAGE_GATEWAY_REDIRECT_PORT": str(redirect_port)})
    yield gateway, final_check.Target(HOST, gateway.port, redirect_port, "127.0.0.1"), cert_pem
    gateway.stop()


def photo() -> Path:
    found = final_check.shared_photo(SHARED_FACES)
    if found is None:
        pytest.skip(f"the shared photos are not at {SHARED_FACES}")
    return found


def test_the_last_check_reads_the_store_and_classifies_a_shared_photo_over_https(deployed_gateway):
    _, target, cert_pem = deployed_gateway
    done = final_check.check(target, cert_pem, os.environ["VISAGE_TOKEN"], photo(), timeout=60, poll=0.2,
                             step=lambda line: None)
    assert "ListPersonas" in done and "faces" in done
    assert int(done.rsplit(": ", 1)[1].split()[0]) >= 2  # the group photo's faces, found by the real mesh


def test_the_last_check_fails_without_a_token_the_mesh_accepts(deployed_gateway):
    _, target, cert_pem = deployed_gateway
    with pytest.raises(DeployError, match="ListPersonas .* answered 401"):
        final_check.check(target, cert_pem, "not-a-token", None, timeout=60, poll=0.2, step=lambda line: None)


def test_the_last_check_refuses_a_gateway_with_another_certificate(deployed_gateway, tmp_path):
    _, target, _ = deployed_gateway
    _, other = key_vault_style_pem(tmp_path, HOST)  # same name, not the certificate Key Vault holds
    with pytest.raises(DeployError, match="does not present the certificate"):
        final_check.check(target, other, os.environ["VISAGE_TOKEN"], None, timeout=5, poll=0.2, step=lambda line: None)


def test_plain_http_redirects_to_https_on_the_same_name(deployed_gateway):
    import requests
    _, target, _ = deployed_gateway
    response = requests.get(f"http://127.0.0.1:{target.http_port}/v1/personas?page_size=1",
                            headers={"Host": HOST}, allow_redirects=False, timeout=10)
    assert response.status_code == 301
    assert response.headers["location"] in (f"https://{HOST}/v1/personas?page_size=1",
                                             f"https://{HOST}:443/v1/personas?page_size=1")
    assert requests.get(f"http://127.0.0.1:{target.http_port}/healthz", timeout=10).status_code == 200
