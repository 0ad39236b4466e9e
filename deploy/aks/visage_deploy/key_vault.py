"""Key Vault's data plane (https://<vault>.vault.azure.net, REST api-version 7.4): what ARM cannot do.
ARM writes a secret but never reads its value back, and has no certificates; so the deploy reads
secret values here to write only what changed, keeps the local issuer's one signing key here, and
has Key Vault make (or import) the gateway's TLS certificate. Plain `requests` with the deployer's
Entra ID token for Key Vault (scope https://vault.azure.net/.default).

The deployer gets "Key Vault Secrets Officer" and "Key Vault Certificates Officer" on the vault
(azure_resources.grant_vault_access); a new grant takes a few minutes to reach Key Vault, which
answers 403 until then: every call here waits that out."""
from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from visage_deploy.errors import DeployError

API_VERSION = "7.4"
SCOPE = "https://vault.azure.net/.default"
GRANT_WAIT_SECONDS = 600
CERTIFICATE_WAIT_SECONDS = 600
PEM = "application/x-pem-file"   # the CSI driver then mounts certificate chain + key as one PEM file

Step = Callable[[str], None]


@dataclass
class Vault:
    url: str                      # https://<name>.vault.azure.net (no trailing slash)
    credential: object
    verify: str | bool = True
    poll: float = 10.0
    step: Step = print
    grant_wait: float = GRANT_WAIT_SECONDS   # 0: a plan reads with whatever access there is, waiting for nothing

    def _call(self, method: str, path: str, body: dict | None = None) -> requests.Response:
        deadline = time.monotonic() + self.grant_wait
        while True:
            token = self.credential.get_token(SCOPE).token
            response = requests.request(method, f"{self.url}{path}", params={"api-version": API_VERSION}, json=body,
                                        headers={"authorization": f"Bearer {token}"}, verify=self.verify, timeout=60)
            if response.status_code != 403 or time.monotonic() > deadline:
                break
            self.step("  waiting for the new Key Vault role assignment to reach the vault ...")
            time.sleep(self.poll)
        if response.status_code >= 400 and response.status_code != 404:
            error = _error(response)
            raise DeployError(f"Key Vault refused {method} {path}: {response.status_code} {error}")
        return response

    def secret(self, name: str) -> str | None:
        """The current value, or None when the vault has no such secret."""
        response = self._call("GET", f"/secrets/{name}")
        return None if response.status_code == 404 else response.json()["value"]

    def certificate(self, name: str) -> dict | None:
        response = self._call("GET", f"/certificates/{name}")
        return None if response.status_code == 404 else response.json()

    def create_certificate(self, name: str, policy: dict) -> dict:
        """Key Vault makes the key and has the policy's issuer sign it; returns the new certificate."""
        self._call("POST", f"/certificates/{name}/create", {"policy": policy})
        deadline = time.monotonic() + CERTIFICATE_WAIT_SECONDS
        while True:
            pending = self._call("GET", f"/certificates/{name}/pending").json()
            if pending.get("status") == "completed":
                return self.certificate(name)
            if pending.get("status") not in (None, "inProgress"):
                raise DeployError(f"Key Vault could not make certificate {name}: {pending.get('status')} "
                                  f"{pending.get('status_details') or pending.get('error')}")
            if time.monotonic() > deadline:
                raise DeployError(f"Key Vault did not finish certificate {name} within {CERTIFICATE_WAIT_SECONDS}s")
            time.sleep(self.poll)

    def import_certificate(self, name: str, pem: str) -> dict:
        return self._call("POST", f"/certificates/{name}/import",
                          {"value": pem, "policy": {"secret_props": {"contentType": PEM}}}).json()


def _error(response: requests.Response) -> str:
    try:
        error = response.json().get("error", {})
        return f"{error.get('code', '')}: {error.get('message', '')}"
    except ValueError:
        return response.text[:200]


def certificate_policy(settings) -> dict:
    """Self-signed by Key Vault (the default), or signed by the issuer the operator registered in the
    vault; renewed by Key Vault a month before it expires (the CSI driver picks the new version up)."""
    host = settings.public_hostname
    return {"key_props": {"exportable": True, "kty": "EC", "crv": "P-256", "reuse_key": False},
            "secret_props": {"contentType": PEM},
            "x509_props": {"subject": f"CN={host}", "sans": {"dns_names": [host]}, "validity_months": 12,
                           "ekus": ["1.3.6.1.5.5.7.3.1"]},
            "issuer": {"name": settings.acme_issuer if settings.certificate == "acme" else "Self"},
            "lifetime_actions": [{"trigger": {"days_before_expiry": 30}, "action": {"action_type": "AutoRenew"}}]}


def policy_matches(live: dict, wanted: dict) -> bool:
    """Only what the deploy sets: the subject, the names and the issuer."""
    policy = live.get("policy") or {}
    x509_props, want = policy.get("x509_props") or {}, wanted["x509_props"]
    return (x509_props.get("subject") == want["subject"]
            and sorted((x509_props.get("sans") or {}).get("dns_names") or []) == sorted(want["sans"]["dns_names"])
            and (policy.get("issuer") or {}).get("name") == wanted["issuer"]["name"])


def thumbprint(pem: str) -> str:
    """Key Vault's x5t: base64url of the SHA-1 of the first certificate's DER."""
    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
    return base64.urlsafe_b64encode(hashlib.sha1(der).digest()).decode().rstrip("=")  # noqa: S324 - the x5t format


def certificate_pem(live: dict) -> str:
    """The public certificate (`cer`: base64 DER) as PEM: what the deploy's last check trusts."""
    der = base64.b64decode(live["cer"])
    return x509.load_der_x509_certificate(der).public_bytes(serialization.Encoding.PEM).decode()
