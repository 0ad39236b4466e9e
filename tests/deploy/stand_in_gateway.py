"""What answers where Azure's load balancer would forward to the gateway, in the provisioner tests
(the pods do not run: there are no nodes). It holds what the real gateway would hold after the
deploy: the certificate Key Vault made (served for the name it was made for, found by SNI), the
JWKS the deploy put in Key Vault (tokens verified with visage.auth.tokens, as the services do), the
public host name (other Host headers: 421), and a plain-http listener that redirects to https.
The real gateway's answers to the same check: tests/gateway/test_deploy_final_check.py."""
from __future__ import annotations

import json
import ssl
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from visage.auth.tokens import AuthConfig, AuthError, TokenVerifier

from tests.deploy.fake_azure import self_signed_cert

LB_IP = "127.0.0.1"
CERTIFICATE = "gateway-tls"


class StandInGateway:
    def __init__(self, fake_azure, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.fake, self.status = fake_azure, 200
        self.calls: list[tuple[str, str]] = []
        self._contexts: dict[str, ssl.SSLContext] = {}
        cert, key = self_signed_cert(directory)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        context.sni_callback = self._pick_certificate
        self.https = ThreadingHTTPServer((LB_IP, 0), self._handler())
        self.https.socket = context.wrap_socket(self.https.socket, server_side=True)
        self.redirect = ThreadingHTTPServer((LB_IP, 0), _redirect_handler())
        self.port, self.redirect_port = self.https.server_address[1], self.redirect.server_address[1]
        for server in (self.https, self.redirect):
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def close(self) -> None:
        for server in (self.https, self.redirect):
            server.shutdown()
            server.server_close()

    def _vault_pem(self, name: str) -> str | None:
        return next((pem for (vault, cert), pem in self.fake.certificate_pems.items() if cert == name), None)

    def _pick_certificate(self, socket, server_name, _context) -> None:
        """The certificate Key Vault holds now (a renewed one replaces it, as the CSI driver would)."""
        pem = self._vault_pem(CERTIFICATE)
        if pem is None or server_name is None:
            return
        if pem not in self._contexts:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            with tempfile.NamedTemporaryFile("w", suffix=".pem") as file:
                file.write(pem)
                file.flush()
                context.load_cert_chain(file.name)
            self._contexts[pem] = context
        socket.context = self._contexts[pem]

    def hostname(self) -> str | None:
        bundle = next((b for (vault, cert), b in self.fake.certificates.items() if cert == CERTIFICATE), None)
        return bundle and bundle["policy"]["x509_props"]["subject"].removeprefix("CN=")

    def verifier(self) -> TokenVerifier:
        jwks = next(value for (vault, name), value in self.fake.secret_values.items() if name == "auth-jwks")
        return TokenVerifier(AuthConfig(), jwks=json.loads(jwks))

    def _handler(self):
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self, status: int, body: dict | None = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self, method: str) -> None:
                gateway.calls.append((method, self.path))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.path == "/healthz":
                    return self._answer(gateway.status)
                if self.headers.get("Host", "").split(":")[0] != gateway.hostname():
                    return self._answer(421, {"code": 2, "message": "not a host name this gateway serves"})
                token = (self.headers.get("authorization") or "").removeprefix("Bearer ")
                try:
                    gateway.verifier().verify(token)
                except AuthError as error:
                    return self._answer(401, {"code": 16, "message": str(error)})
                if method == "GET" and self.path.startswith("/v1/personas"):
                    return self._answer(200, {"personas": []})
                if method == "POST" and self.path == "/v1/images:classify" and json.loads(body).get("content"):
                    return self._answer(200, {"faces": [{"faceId": "stand-in"}], "modelVersion": "0"})
                return self._answer(404, {"code": 5, "message": self.path})

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

        return Handler


def _redirect_handler():
    class Redirect(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(301)
            self.send_header("Location", f"https://{self.headers.get('Host', '').split(':')[0]}{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Redirect
