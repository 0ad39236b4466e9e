"""A real OpenID Connect provider (Keycloak, from Maven Central) for the UI's sign-in tests.

    python scripts/keycloak.py fetch   # download + unpack the pinned distribution into the cache; idempotent
    python scripts/keycloak.py paths   # print where it is (exit 1 when not fetched)

The distribution (org.keycloak:keycloak-quarkus-dist, version KEYCLOAK_VERSION) is fetched with `mvn`
and unpacked OUTSIDE the clone, in $VISAGE_KEYCLOAK_CACHE or ~/.cache/visage/keycloak/, so every
clone and CI run on a machine fetches it once. It runs on a JDK 21 or newer (found in JAVA_HOME or
/usr/lib/jvm). Tests start their own server through `LocalKeycloak` (tests/gateway/test_browser_oidc.py)
with a realm they describe (users, their realm roles, one public client); nothing here is a daemon.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

KEYCLOAK_VERSION = "26.7.3"
ARTIFACT = f"org.keycloak:keycloak-quarkus-dist:{KEYCLOAK_VERSION}:zip"
CACHE = Path(os.environ.get("VISAGE_KEYCLOAK_CACHE") or Path.home() / ".cache" / "visage" / "keycloak")
HOME = CACHE / f"keycloak-{KEYCLOAK_VERSION}"
KC_SH = HOME / "bin" / "kc.sh"
MIN_JAVA = 21
START_TIMEOUT_S = 300  # a cold start (Quarkus build + realm import) on a busy 2-core machine; readiness is polled


def java_home() -> Path | None:
    """A JDK of at least MIN_JAVA: JAVA_HOME's, else the newest in /usr/lib/jvm."""
    candidates = [Path(os.environ["JAVA_HOME"])] if os.environ.get("JAVA_HOME") else []
    candidates += sorted(Path("/usr/lib/jvm").glob("*"), reverse=True) if Path("/usr/lib/jvm").is_dir() else []
    for home in candidates:
        release = home / "release"
        if (home / "bin" / "java").is_file() and release.is_file():
            found = re.search(r'JAVA_VERSION="(\d+)', release.read_text())
            if found and int(found.group(1)) >= MIN_JAVA:
                return home
    return None


def missing() -> str | None:
    """Why LocalKeycloak cannot start here, or None."""
    if not KC_SH.is_file():
        return f"Keycloak {KEYCLOAK_VERSION} is not in {CACHE} (python3 scripts/keycloak.py fetch)"
    if java_home() is None:
        return f"Keycloak needs a JDK {MIN_JAVA} or newer (none in JAVA_HOME or /usr/lib/jvm)"
    return None


def fetch() -> int:
    if KC_SH.is_file():
        print(f"keycloak: {HOME} (cached)")
        return 0
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as download:
        print(f"keycloak: fetching {ARTIFACT} from Maven Central (mvn)...", flush=True)
        subprocess.run(["mvn", "-q", "-B", "dependency:copy", f"-Dartifact={ARTIFACT}",
                        f"-DoutputDirectory={download}"], check=True)
        [archive] = Path(download).glob("*.zip")
        unpacked = Path(download) / "unpacked"
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(unpacked)
        [top] = unpacked.iterdir()  # keycloak-<version>/
        for script in (top / "bin").glob("*.sh"):
            script.chmod(0o755)  # zipfile keeps no modes
        top.rename(HOME)  # last: a half-unpacked tree is never taken for a cached one
    print(f"keycloak: {HOME}")
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class User:
    username: str
    password: str
    roles: list[str]  # realm roles, put in the tokens' `roles` claim


@dataclass
class LocalKeycloak:
    """One Keycloak on localhost (its own dev database under `work_dir`) with one realm: the
    realm roles named by the users, a public client (authorization code + PKCE, refresh
    tokens) whose tokens carry `roles` (the user's realm roles, as Entra ID's app roles
    do) and the audience `audience`."""
    work_dir: Path
    client_id: str
    redirect_uris: list[str]
    users: list[User]
    realm: str = "visage"
    audience: str = "visage"
    access_token_seconds: int = 300
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    admin_password: str = "admin-password-for-tests"  # the throwaway server's bootstrap admin, on loopback

    @property
    def url(self) -> str:
        # "localhost", not 127.0.0.1: another site than the UI's, whose cookies the UI never sees.
        return f"http://localhost:{self.port}"

    @property
    def issuer(self) -> str:
        return f"{self.url}/realms/{self.realm}"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/certs"

    def realm_json(self) -> dict:
        mappers = [
            {"name": "roles", "protocol": "openid-connect", "protocolMapper": "oidc-usermodel-realm-role-mapper",
             "config": {"claim.name": "roles", "multivalued": "true", "jsonType.label": "String",
                        "access.token.claim": "true", "id.token.claim": "true", "userinfo.token.claim": "true"}},
            {"name": "audience", "protocol": "openid-connect", "protocolMapper": "oidc-audience-mapper",
             "config": {"included.custom.audience": self.audience, "access.token.claim": "true",
                        "id.token.claim": "false"}},
        ]
        client = {"clientId": self.client_id, "enabled": True, "publicClient": True, "protocol": "openid-connect",
                  "standardFlowEnabled": True, "implicitFlowEnabled": False, "directAccessGrantsEnabled": False,
                  "redirectUris": self.redirect_uris, "webOrigins": ["+"],
                  "attributes": {"pkce.code.challenge.method": "S256", "post.logout.redirect.uris": "+"},
                  "protocolMappers": mappers}
        users = [{"username": u.username, "enabled": True, "email": f"{u.username}@example.org",
                  "emailVerified": True, "firstName": u.username.title(), "lastName": "Example",
                  "credentials": [{"type": "password", "value": u.password, "temporary": False}],
                  "realmRoles": u.roles} for u in self.users]
        roles = sorted({role for u in self.users for role in u.roles})
        return {"realm": self.realm, "enabled": True, "sslRequired": "none",
                "accessTokenLifespan": self.access_token_seconds,
                "roles": {"realm": [{"name": role} for role in roles]},
                "clients": [client], "users": users}

    def start(self) -> "LocalKeycloak":
        reason = missing()
        if reason:
            raise RuntimeError(reason)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, JAVA_HOME=str(java_home()),
                   KC_BOOTSTRAP_ADMIN_USERNAME="admin", KC_BOOTSTRAP_ADMIN_PASSWORD=self.admin_password)
        with (self.work_dir / "keycloak.log").open("wb") as log:
            # An in-memory database: nothing of a test's realm outlives its server.
            self.process = subprocess.Popen(
                [str(KC_SH), "start-dev", "--db=dev-mem", f"--http-port={self.port}", "--http-host=127.0.0.1",
                 f"--hostname={self.url}"],
                env=env, cwd=self.work_dir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready()
            self._post("/admin/realms", self.realm_json())
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        discovery = f"{self.url}/realms/master/.well-known/openid-configuration"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Keycloak exited ({self.process.returncode}); log:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(discovery, timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)  # a hang guard's poll interval, not a wait for something to happen
        raise RuntimeError(f"Keycloak did not answer in {START_TIMEOUT_S} s; log:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return (self.work_dir / "keycloak.log").read_text(errors="replace")[-4000:]

    def admin(self, method: str, path: str, body: dict | None = None) -> object:
        """A call to the admin REST API of the realm (as the bootstrap admin)."""
        return self._post(f"/admin/realms/{self.realm}{path}", body, method)

    def _post(self, path: str, body: dict | None, method: str = "POST") -> object:
        form = urllib.parse.urlencode({"grant_type": "password", "client_id": "admin-cli", "username": "admin",
                                       "password": self.admin_password}).encode()
        with urllib.request.urlopen(f"{self.url}/realms/master/protocol/openid-connect/token", form,
                                    timeout=30) as response:
            token = json.load(response)["access_token"]
        request = urllib.request.Request(f"{self.url}{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"authorization": f"Bearer {token}",
                                                  "content-type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read()
        return json.loads(text) if text else None

    def end_sessions_of(self, username: str) -> None:
        """Signs the user out at the provider: every refresh token of theirs stops working."""
        [user] = self.admin("GET", f"/users?username={urllib.parse.quote(username)}&exact=true")
        self.admin("POST", f"/users/{user['id']}/logout")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/keycloak.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["fetch", "paths"])
    args = parser.parse_args(argv)
    if args.command == "fetch":
        return fetch()
    reason = missing()
    print(reason or f"{KC_SH}\nJAVA_HOME={java_home()}")
    return 1 if reason else 0


if __name__ == "__main__":
    sys.exit(main())
