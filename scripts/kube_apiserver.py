"""A real Kubernetes API server (kube-apiserver + etcd) for the deploy tests, without Docker.

    python scripts/kube_apiserver.py build   # compile both from the Go module proxy into the cache; idempotent
    python scripts/kube_apiserver.py paths   # print where the binaries are (exit 1 when not built)
    python scripts/kube_apiserver.py run     # start both on loopback until Ctrl-C (prints a kubeconfig path)

The Go modules that import them are in scripts/kube/{apiserver,etcd} (go.mod pins the versions,
go.sum the hashes). Binaries are cached OUTSIDE the clone, in $VISAGE_KUBE_CACHE or
~/.cache/visage/kube/<component>-<version>/, so every clone and CI run on a machine builds them once.
Tests start their own pair through `LocalKube` (tests/deploy/conftest.py); nothing here runs as a daemon.
"""
from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODULES = REPO / "scripts" / "kube"
CACHE = Path(os.environ.get("VISAGE_KUBE_CACHE") or Path.home() / ".cache" / "visage" / "kube")
START_TIMEOUT_S = 180  # a cold start on a busy 2-core machine; readiness is polled, never assumed


@dataclass(frozen=True)
class Component:
    binary: str
    module_dir: Path
    requirement: str            # the module whose version names the cache folder
    cache_name: str

    @property
    def version(self) -> str:
        found = re.search(rf"^(?:require)?\s*{re.escape(self.requirement)} (v\S+)",
                          (self.module_dir / "go.mod").read_text(), re.MULTILINE)
        return found.group(1)

    @property
    def path(self) -> Path:
        return CACHE / f"{self.cache_name}-{self.version}" / self.binary


ETCD = Component("etcd", MODULES / "etcd", "go.etcd.io/etcd/server/v3", "etcd")
APISERVER = Component("kube-apiserver", MODULES / "apiserver", "k8s.io/kubernetes", "k8s")
COMPONENTS = (ETCD, APISERVER)


def _ldflags(component: Component) -> str:
    flags = ["-s", "-w"]
    if component is APISERVER:  # what the apiserver reports as its version (/version, discovery)
        major, minor = component.version.lstrip("v").split(".")[:2]
        flags += [f"-X k8s.io/component-base/version.gitVersion={component.version}",
                  f"-X k8s.io/component-base/version.gitMajor={major}",
                  f"-X k8s.io/component-base/version.gitMinor={minor}"]
    return " ".join(flags)


def build(component: Component) -> Path:
    """`go build` of the component's tiny main module; skipped when the cached binary exists.
    `-v` prints each package as it compiles: the progress of a build that takes many minutes."""
    if component.path.exists():
        print(f"{component.binary} {component.version}: cached at {component.path}")
        return component.path
    go = shutil.which("go")
    if go is None:
        raise SystemExit("go is not installed: install Go >= 1.26 (https://go.dev/dl/) to build kube-apiserver")
    component.path.parent.mkdir(parents=True, exist_ok=True)
    partial = component.path.with_suffix(".partial")
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": os.environ.get("GOFLAGS", "-mod=mod"),
           "GOTOOLCHAIN": os.environ.get("GOTOOLCHAIN", "auto")}  # fetches a newer Go from the proxy if go.mod needs one
    print(f"==> {component.binary} {component.version}: building from the Go module proxy (once per machine; "
          "~20 min, 10-40 minutes on 2 cores) ...", flush=True)  # "==> ": shown by scripts/logged.py
    started = time.monotonic()
    subprocess.run([go, "build", "-v", "-trimpath", "-ldflags", _ldflags(component), "-o", str(partial), "."],
                   cwd=component.module_dir, env=env, check=True)
    partial.rename(component.path)  # only a complete binary ever has the final name
    print(f"{component.binary}: built in {time.monotonic() - started:.0f} s -> {component.path}", flush=True)
    return component.path


def missing() -> list[Component]:
    return [component for component in COMPONENTS if not component.path.exists()]


# -- running a throwaway pair on loopback -------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_pki(directory: Path) -> dict[str, Path]:
    """A CA, the apiserver's serving cert (127.0.0.1), and the key that signs service-account tokens."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    def key():
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def pem_key(private) -> bytes:
        return private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, server_key, sa_key = key(), key(), key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "visage-test-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
              .issuer_name(ca_name).public_key(server_key.public_key())
              .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
              .not_valid_after(now + datetime.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                          x509.DNSName("localhost")]), False)
              .sign(ca_key, hashes.SHA256()))
    files = {"ca": directory / "ca.crt", "cert": directory / "apiserver.crt", "key": directory / "apiserver.key",
             "sa_key": directory / "sa.key", "sa_pub": directory / "sa.pub"}
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(pem_key(server_key))
    files["sa_key"].write_bytes(pem_key(sa_key))
    files["sa_pub"].write_bytes(sa_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return files


def _die_with_parent() -> None:
    """In the child before exec: when the test process dies (even by SIGKILL), the kernel sends
    SIGTERM, so no stray apiserver or etcd is left on a shared machine."""
    if sys.platform == "linux":
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


class LocalKube:
    """etcd + kube-apiserver on loopback ports, state in a temporary directory.

    Authentication: a static bearer token for a system:masters user (the tests' "admin").
    Admission: the apiserver's default plugins, which include PodSecurity: a namespace
    labelled pod-security.kubernetes.io/enforce=restricted refuses non-compliant pods."""

    def __init__(self, directory: Path | None = None):
        self.directory = Path(directory or tempfile.mkdtemp(prefix="visage-kube-"))
        self.token = secrets.token_hex(16)
        self.newcomer_token = secrets.token_hex(16)  # authenticated, but granted nothing (RBAC)
        self.port = _free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        self.processes: list[subprocess.Popen] = []

    def start(self) -> "LocalKube":
        pki = _write_pki(self.directory)
        self.ca_file = pki["ca"]
        (self.directory / "tokens.csv").write_text(f"{self.token},admin,admin-uid,system:masters\n"
                                                   f"{self.newcomer_token},newcomer,newcomer-uid\n")
        client_port, peer_port = _free_port(), _free_port()
        etcd_url = f"http://127.0.0.1:{client_port}"
        self._spawn("etcd", [str(ETCD.path), "--data-dir", str(self.directory / "etcd"),
                             "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
                             "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
                             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
                             "--initial-cluster", f"default=http://127.0.0.1:{peer_port}",
                             "--unsafe-no-fsync", "--quota-backend-bytes", str(512 * 2**20)])
        self._spawn("kube-apiserver", [
            str(APISERVER.path), "--etcd-servers", etcd_url,
            "--bind-address", "127.0.0.1", "--secure-port", str(self.port), "--advertise-address", "127.0.0.1",
            "--tls-cert-file", str(pki["cert"]), "--tls-private-key-file", str(pki["key"]),
            "--client-ca-file", str(pki["ca"]), "--token-auth-file", str(self.directory / "tokens.csv"),
            "--authorization-mode", "RBAC",
            "--service-account-issuer", "https://kubernetes.default.svc",
            "--service-account-key-file", str(pki["sa_pub"]),
            "--service-account-signing-key-file", str(pki["sa_key"]),
            "--service-cluster-ip-range", "10.96.0.0/16",
            "--endpoint-reconciler-type", "none",  # nothing but loopback to advertise
            "--enable-admission-plugins", "PodSecurity",  # on by default; named because the tests rely on it
            "--allow-privileged=false", "--v=1"])
        self.wait_ready()
        return self

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.directory / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.processes.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True, preexec_fn=_die_with_parent))

    def wait_ready(self) -> None:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        request = urllib.request.Request(f"{self.server}/readyz", headers={"Authorization": f"Bearer {self.token}"})
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"{process.args[0]} exited with {process.returncode}: "
                                       f"{self.log_tail(Path(process.args[0]).name)}")
            try:
                with urllib.request.urlopen(request, context=context, timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"kube-apiserver not ready after {START_TIMEOUT_S}s: "
                                   f"{self.log_tail('kube-apiserver')}")
            time.sleep(0.5)

    def log_tail(self, name: str, lines: int = 15) -> str:
        path = self.directory / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def kubeconfig(self) -> dict:
        import base64
        return {"apiVersion": "v1", "kind": "Config", "current-context": "local",
                "clusters": [{"name": "local", "cluster": {
                    "server": self.server,
                    "certificate-authority-data": base64.b64encode(self.ca_file.read_bytes()).decode()}}],
                "users": [{"name": "admin", "user": {"token": self.token}}],
                "contexts": [{"name": "local", "context": {"cluster": "local", "user": "admin"}}]}

    def stop(self) -> None:
        for process in reversed(self.processes):  # apiserver first, then its etcd
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["build", "paths", "run"])
    command = parser.parse_args().command
    if command == "build":
        for component in COMPONENTS:
            build(component)
        return 0
    if command == "paths":
        for component in COMPONENTS:
            print(component.path)
        return 1 if missing() else 0
    import yaml
    kube = LocalKube().start()
    config = kube.directory / "kubeconfig"
    config.write_text(yaml.safe_dump(kube.kubeconfig()))
    print(f"kube-apiserver ready at {kube.server}; KUBECONFIG={config} (Ctrl-C stops it)", flush=True)
    try:
        while all(process.poll() is None for process in kube.processes):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        kube.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
