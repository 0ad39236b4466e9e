"""The deploy's last check, through the public https address as a person would use it: /healthz, an
authenticated read of the store (ListPersonas) and a Classify of a shared photo, trusting exactly
the certificate Key Vault holds for the gateway (self-signed by default: no public CA vouches for it,
so the check pins it rather than turning verification off). Plain http must redirect to https."""
from __future__ import annotations

import base64
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter

from visage_deploy.errors import DeployError

Step = Callable[[str], None]
PHOTO_CANDIDATES = ("scenes/bbt1.jpg", "presidents")  # a group photo first: faces to find


@dataclass(frozen=True)
class Target:
    hostname: str                               # the public name (Host, SNI, the certificate's name)
    https_port: int = 443
    http_port: int = 80
    connect_to: str | None = None               # tests: the address the name would resolve to


class _PinnedAddress(HTTPAdapter):
    """Connects to `address` while speaking to `hostname` (SNI and certificate name): what DNS does
    for the real name; tests use it where the Azure name does not resolve."""

    def __init__(self, address: str, hostname: str):
        self.address, self.hostname = address, hostname
        super().__init__()

    def send(self, request, **kwargs):
        request.url = request.url.replace(f"//{self.hostname}", f"//{self.address}", 1)
        request.headers["Host"] = self.hostname
        return super().send(request, **kwargs)

    def init_poolmanager(self, *args, **kwargs):
        kwargs.update(server_hostname=self.hostname, assert_hostname=self.hostname)
        super().init_poolmanager(*args, **kwargs)


def shared_photo(faces_dir: Path | None) -> Path | None:
    if faces_dir is None:
        return None
    for candidate in PHOTO_CANDIDATES:
        path = faces_dir / candidate
        if path.is_file():
            return path
        if path.is_dir():
            return next(iter(sorted(path.rglob("*.jpg"))), None)
    return next(iter(sorted(faces_dir.rglob("*.jpg"))), None)


def _session(target: Target, ca_pem: str, workdir: Path) -> requests.Session:
    session = requests.Session()
    ca_file = workdir / "gateway-ca.pem"
    ca_file.write_text(ca_pem)
    session.verify = str(ca_file)
    session.trust_env = False  # else REQUESTS_CA_BUNDLE would replace the pinned certificate
    if target.connect_to:
        session.mount(f"https://{target.hostname}", _PinnedAddress(target.connect_to, target.hostname))
        session.mount(f"http://{target.hostname}", _PinnedAddress(target.connect_to, target.hostname))
    return session


def check(target: Target, ca_pem: str, token: str, photo: Path | None, timeout: float, poll: float,
          step: Step) -> str:
    """Raises DeployError saying what failed; returns a one-line summary of what worked."""
    base = f"https://{target.hostname}" + ("" if target.https_port == 443 else f":{target.https_port}")
    with tempfile.TemporaryDirectory() as workdir:
        session = _session(target, ca_pem, Path(workdir))
        _wait_for_health(session, base, timeout, poll, step)
        _check_redirect(session, target)
        auth = {"authorization": f"Bearer {token}"}
        personas = _call(session, "GET", f"{base}/v1/personas?page_size=100", auth, "ListPersonas (reads the store)")
        summary = f"ListPersonas: {len(personas.get('personas', []))} personas"
        if photo is None:
            return summary + "; no shared photo here to classify (VISAGE_FACES_DIR)"
        body = {"content": base64.b64encode(photo.read_bytes()).decode()}
        faces = _call(session, "POST", f"{base}/v1/images:classify", auth, f"Classify {photo.name}", body).get("faces", [])
        if not faces:
            raise DeployError(f"Classify {photo.name} through {base} found no face in a photo that has faces")
        return summary + f"; Classify {photo.name}: {len(faces)} faces"


def _wait_for_health(session: requests.Session, base: str, timeout: float, poll: float, step: Step) -> None:
    """New DNS names and load-balancer rules take a few minutes: /healthz until it answers 200."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        try:
            response = session.get(f"{base}/healthz", timeout=10)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code} {response.text[:200]}"
        except requests.exceptions.SSLError as error:
            raise DeployError(f"{base} does not present the certificate Key Vault holds for it: {error}") from error
        except requests.RequestException as error:
            last = str(error)
        if time.monotonic() > deadline:
            raise DeployError(f"the gateway at {base} is not healthy after {timeout:.0f}s (last: {last}); the pods "
                              "are rolled out, so check the load balancer and `kubectl -n visage logs deploy/visage-gateway`")
        step(f"  waiting for {base}/healthz ({last}) ...")
        time.sleep(poll)


def _check_redirect(session: requests.Session, target: Target) -> None:
    url = f"http://{target.hostname}" + ("" if target.http_port == 80 else f":{target.http_port}") + "/v1/personas"
    try:
        response = session.get(url, allow_redirects=False, timeout=10)
    except requests.RequestException as error:
        raise DeployError(f"{url} does not answer (it should redirect to https): {error}") from error
    location = response.headers.get("location", "")
    if response.status_code not in (301, 308) or not location.startswith(f"https://{target.hostname}"):
        raise DeployError(f"{url} answered {response.status_code} {location!r}, not a redirect to https")


def _call(session: requests.Session, method: str, url: str, headers: dict, what: str, body: dict | None = None) -> dict:
    try:
        response = session.request(method, url, headers=headers, json=body, timeout=120)
    except requests.RequestException as error:
        raise DeployError(f"{what} through {url} failed: {error}") from error
    if response.status_code != 200:
        raise DeployError(f"{what} through {url} answered {response.status_code}: {response.text[:300]}")
    return response.json()
