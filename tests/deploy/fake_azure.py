"""A local HTTPS server that answers like Azure Resource Manager (resource
groups, ACR, ACR Tasks, AKS, role assignments, with long-running operations
polled through Azure-AsyncOperation / Location), like the blob the build
context is uploaded to, and like the Kubernetes API of the cluster it makes.
Every request is recorded so tests can tell a change from a read."""
from __future__ import annotations

import base64
import datetime
import ipaddress
import itertools
import json
import re
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

GATEWAY_IP = "203.0.113.10"  # TEST-NET-3: a documentation address, never contacted


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class FakeAzure:
    def __init__(self, directory: Path):
        self.cert, key = self_signed_cert(directory)
        self.resources: dict[str, dict] = {}     # lower-cased ARM id / kube path → document
        self.operations: dict[str, int] = {}     # async operation → polls left before Succeeded
        self.runs: dict[str, dict] = {}
        self.uploads: list[int] = []
        self.requests: list[tuple[str, str]] = []
        self.failures: dict[tuple[str, str], tuple[int, str, str]] = {}  # (method, path regex) → error
        self.ids = itertools.count(1)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.base = f"https://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def mutations(self) -> list[tuple[str, str]]:
        return [(method, path) for method, path in self.requests if method in ("PUT", "POST", "PATCH", "DELETE")
                and not path.lower().endswith(("/listclusteradmincredential",))]

    # -- request handling ------------------------------------------------------------------------------------
    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _send(self, status: int, body: dict | None = None, headers: dict | None = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def _dispatch(self) -> None:
                url = urlsplit(self.path)
                fake.requests.append((self.command, url.path))
                body = self._body()
                for (method, pattern), (status, code, message) in fake.failures.items():
                    if method == self.command and re.search(pattern, url.path, re.IGNORECASE):
                        return self._send(status, {"error": {"code": code, "message": message}})
                status, document, headers = fake.handle(self.command, url.path, parse_qs(url.query), body)
                self._send(status, document, headers)

            do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = _dispatch

        return Handler

    def handle(self, method: str, path: str, query: dict, body: bytes) -> tuple[int, dict | None, dict]:
        key = path.lower().rstrip("/")
        if path.startswith("/blob/"):
            self.uploads.append(len(body))
            return 201, None, {}
        if path.startswith(("/api/", "/apis/")):
            return self.kube(method, key, body)
        if key.startswith("/operations/"):
            return self.poll_operation(key)
        if key.endswith("/listbuildsourceuploadurl"):
            return 200, {"uploadUrl": f"{self.base}/blob/source.tar.gz?sig=x", "relativePath": "source/1.tar.gz"}, {}
        if key.endswith("/schedulerun"):
            return self.schedule_run(json.loads(body))
        if key.endswith("/runs") and method == "GET":
            return 200, {"value": self.matching_runs(query.get("$filter", [""])[0])}, {}
        if "/runs/" in key and method == "GET":
            return 200, self.runs[key.rsplit("/", 1)[1]], {}
        if key.endswith("/listclusteradmincredential"):
            return 200, {"kubeconfigs": [{"name": "clusterAdmin", "value": self.kubeconfig()}]}, {}
        if method == "GET":
            found = self.resources.get(key)
            return (200, found, {}) if found else (404, {"error": {"code": "ResourceNotFound", "message": path}}, {})
        if method == "PUT":
            return self.put(key, path, json.loads(body))
        if method == "DELETE":
            return self.delete(key)
        return 400, {"error": {"code": "BadRequest", "message": f"{method} {path}"}}, {}

    def _operation(self, polls: int = 1) -> str:
        operation = f"/operations/{next(self.ids)}"
        self.operations[operation] = polls
        return f"{self.base}{operation}"

    def poll_operation(self, key: str) -> tuple[int, dict, dict]:
        self.operations[key] -= 1
        if self.operations[key] >= 0:
            return 200, {"status": "InProgress"}, {}
        return 200, {"status": "Succeeded"}, {}

    def put(self, key: str, path: str, document: dict) -> tuple[int, dict, dict]:
        stored = {**document, "id": path, "name": path.rsplit("/", 1)[1]}
        stored.setdefault("properties", {})["provisioningState"] = "Succeeded"
        if "/microsoft.containerregistry/registries/" in key:
            stored["properties"]["loginServer"] = f"{stored['name']}.azurecr.io"
        if "/microsoft.containerservice/managedclusters/" in key:
            stored["properties"]["identityProfile"] = {"kubeletidentity": {"objectId": "11111111-2222-3333-4444-555555555555"}}
        self.resources[key] = stored
        if "/providers/" not in key or "/roleassignments/" in key:  # resource groups, role assignments: synchronous
            return 201, stored, {}
        in_progress = {**stored, "properties": {**stored["properties"], "provisioningState": "Creating"}}
        return 201, in_progress, {"Azure-AsyncOperation": self._operation()}

    def delete(self, key: str) -> tuple[int, None, dict]:
        for resource in [name for name in self.resources if name == key or name.startswith(key + "/")]:
            del self.resources[resource]
        return 202, None, {"Location": self._operation(), "Retry-After": "0"}

    def schedule_run(self, request: dict) -> tuple[int, dict, dict]:
        run_id = f"ca{next(self.ids)}"
        self.runs[run_id] = {"runId": run_id, "status": "Running", "request": request,
                             "outputImages": [{"repository": name.split(":")[0], "tag": name.split(":")[1]}
                                              for name in request["imageNames"]]}
        threading.Timer(0.05, lambda: self.runs[run_id].update(status="Succeeded")).start()
        return 200, {"runId": run_id, "status": "Queued"}, {}

    def matching_runs(self, odata_filter: str) -> list[dict]:
        image = re.search(r"OutputImageManifests eq '([^']+)'", odata_filter).group(1)
        return [run for run in self.runs.values() if run["status"] == "Succeeded"
                and image in run["request"]["imageNames"]]

    def kubeconfig(self) -> str:
        config = {"apiVersion": "v1", "kind": "Config", "current-context": "fake",
                  "clusters": [{"name": "fake", "cluster": {
                      "server": self.base,
                      "certificate-authority-data": base64.b64encode(self.cert.read_bytes()).decode()}}],
                  "users": [{"name": "admin", "user": {"token": "kube-token"}}],
                  "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "admin"}}]}
        return base64.b64encode(yaml.safe_dump(config).encode()).decode()

    def kube(self, method: str, key: str, body: bytes) -> tuple[int, dict | None, dict]:
        not_found = {"kind": "Status", "code": 404, "message": f"{key} not found"}
        if method == "GET":
            found = self.resources.get(key)
            return (200, found, {}) if found else (404, not_found, {})
        if method == "PATCH":  # server-side apply: the applied object becomes the live one
            document = json.loads(body)
            document["metadata"]["resourceVersion"] = str(next(self.ids))
            if document["kind"] == "Service" and document["spec"].get("type") == "LoadBalancer":
                document["status"] = {"loadBalancer": {"ingress": [{"ip": GATEWAY_IP}]}}
            self.resources[key] = document
            return 200, document, {}
        if method == "DELETE":
            return (200, self.resources.pop(key), {}) if key in self.resources else (404, not_found, {})
        return 405, {"kind": "Status", "code": 405}, {}
