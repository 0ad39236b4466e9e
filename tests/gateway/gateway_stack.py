"""The gateway test stack: a client for the real Envoy started by
`python -m visage_gateway`, and a handle on the in-process services."""
from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc

from visage.config import Config
from visage.store.base import RECLASSIFIED_VERSION_KEY
from visage.store.sqlite import SqliteStore
from visage.v1 import ingest_pb2, ingest_pb2_grpc
from visage_trainer.server import CURSOR_META_KEY as TRAINER_CURSOR, TRIGGER_EVENTS as TRAINING_TRIGGERS
from visage.loopback import free_port

REPO = Path(__file__).resolve().parents[2]
READY_SECONDS = 180  # a hang guard: a crashed Envoy is seen at once (poll), a loaded machine may be slow


@dataclass
class Mesh:
    config: Config
    store: SqliteStore
    ports: dict[str, int]

    def ingest_files(self, paths: list[Path]) -> dict[Path, list[str]]:
        """Ingests photos over gRPC; returns each photo's face ids."""
        with grpc.insecure_channel(f"127.0.0.1:{self.ports['ingest']}") as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            return {path: [f.face_id for f in stub.IngestImage(
                ingest_pb2.IngestImageRequest(content=path.read_bytes(), filename=path.name), timeout=60).faces]
                for path in paths}

    def learning_settled(self) -> bool:
        """The trainer has handled every label and persona event (its durable cursor, which it
        moves only when no job is outstanding, is past them) and the classifier has
        re-classified every face with the version that left active: no prediction is about
        to change under the page."""
        cursor = self.store.get_meta(TRAINER_CURSOR) or ""
        while events := self.store.read_events(cursor, 1000):
            if any(event.type in TRAINING_TRIGGERS for event in events):
                return False
            cursor = events[-1].cursor
        active = self.store.active_model_version()
        return active is None or self.store.get_meta(RECLASSIFIED_VERSION_KEY) == str(active.version)


@dataclass
class Gateway:
    url: str
    port: int
    process: subprocess.Popen
    log_path: Path
    ssl_context: ssl.SSLContext | None = None  # https: trusts the gateway's certificate

    def request(self, method: str, path: str, body: bytes | dict | None = None,
                headers: dict[str, str] | None = None, timeout: float = 60,
                anonymous: bool = False) -> tuple[int, dict, bytes]:
        """Sends the test session's admin token (VISAGE_TOKEN) unless `headers`
        carry an authorization of their own or the caller is `anonymous`."""
        headers = dict(headers or {})
        if not anonymous and "authorization" not in {k.lower() for k in headers}:
            headers["authorization"] = f"Bearer {os.environ['VISAGE_TOKEN']}"
        if isinstance(body, dict):
            body = json.dumps(body).encode()
            headers.setdefault("content-type", "application/json")
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.ssl_context) as response:
                return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
        except urllib.error.HTTPError as error:
            return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()

    def json(self, method: str, path: str, body: dict | None = None, **kwargs) -> tuple[int, dict]:
        status, _, data = self.request(method, path, body, **kwargs)
        return status, json.loads(data)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=20)


# Playwright's own 30 s default for each wait, raised: `make test` must pass while
# other jobs keep both cores busy, and a page's steps then take many times longer.
BROWSER_WAIT_MS = 120_000


def patient(context):
    """A browser context whose waits allow for a loaded machine (BROWSER_WAIT_MS)."""
    context.set_default_timeout(BROWSER_WAIT_MS)
    return context


def sign_in(context, token: str | None = None) -> None:
    """Every page of a Playwright browser context starts signed in to the UI
    (the session's admin token, VISAGE_TOKEN, unless `token` is given), and waits
    patiently."""
    token = token or os.environ["VISAGE_TOKEN"]
    patient(context).add_init_script(f"sessionStorage.setItem('visage.token', {json.dumps(token)});")


def start_gateway(ports: dict[str, int], work_dir: Path, extra_env: dict[str, str] | None = None,
                  port: int | None = None) -> Gateway:
    """`python -m visage_gateway` on a free port (or `port`: one chosen earlier, e.g. for a
    sign-in provider's redirect URI), waiting until Envoy answers."""
    work_dir.mkdir(parents=True, exist_ok=True)
    chosen = port
    for attempt in range(3):  # another process may take the free port before Envoy binds it
        port = chosen or free_port()
        env = dict(os.environ, VISAGE_DATA_DIR=str(work_dir), VISAGE_GATEWAY_PORT=str(port),
                   **{f"VISAGE_{name.upper()}_PORT": str(p) for name, p in ports.items()}, **(extra_env or {}))
        log_path = work_dir / f"gateway-{attempt}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen([sys.executable, "-m", "visage_gateway"], env=env, cwd=REPO,
                                       stdout=log, stderr=subprocess.STDOUT)
        cert = env.get("VISAGE_GATEWAY_TLS_CERT")
        context = ssl.create_default_context(cafile=cert) if cert else None
        gateway = Gateway(f"{'https' if cert else 'http'}://127.0.0.1:{port}", port, process, log_path, context)
        deadline = time.monotonic() + READY_SECONDS
        while process.poll() is None and time.monotonic() < deadline:
            try:
                if gateway.request("GET", "/healthz", timeout=2)[0] == 200:
                    return gateway
            except OSError:
                time.sleep(0.1)
        gateway.stop()
    raise RuntimeError(f"gateway did not start; log:\n{log_path.read_text()[-3000:]}")


