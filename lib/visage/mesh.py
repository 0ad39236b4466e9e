"""`make run`: starts every service of the mesh on embedded defaults, then the
Envoy gateway, and supervises them: if one exits, everything stops (so a
broken mesh is never half-up). Ctrl-C / SIGTERM stops all gracefully.

`start_in_process` is the same mesh (without the gateway) inside one process,
for tests and benchmarks."""
from __future__ import annotations

import importlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from visage.auth.local import LocalIssuer
from visage.auth.roles import Role
from visage.auth.tokens import AuthConfig
from visage.config import Config
from visage.server import RunningService, setup_logging
from visage.store import Store

if TYPE_CHECKING:
    from visage.faces.pool import PipelinePool
    from visage_trainer.training import TrainerSettings

log = logging.getLogger("visage.mesh")

# Order matters: the query service migrates the store first; the gateway comes last.
SERVICES = [
    ("query", "visage_query"),
    ("ingest", "visage_ingest"),
    ("trainer", "visage_trainer"),
    ("classifier", "visage_classifier"),
]
READY_TIMEOUT_SECONDS = 120
LOGIN_LINK_SECONDS = 12 * 3600


def wait_serving(address: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} not serving after {timeout:.0f}s")
            time.sleep(0.2)


def start_all(config: Config) -> list[tuple[str, subprocess.Popen]]:
    children: list[tuple[str, subprocess.Popen]] = []
    for name, module in SERVICES:
        proc = subprocess.Popen([sys.executable, "-m", module], env=os.environ.copy())
        children.append((name, proc))
        wait_serving(f"{config.host}:{getattr(config.ports, name)}", READY_TIMEOUT_SECONDS)
        log.info("%s is serving on %s:%d", name, config.host, getattr(config.ports, name))
    gateway = subprocess.Popen([sys.executable, "-m", "visage_gateway"], env=os.environ.copy())
    children.append(("gateway", gateway))
    return children


def stop_all(children: list[tuple[str, subprocess.Popen]]) -> None:
    for _, proc in reversed(children):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for name, proc in reversed(children):
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in time; killing it", name)
            proc.kill()


@dataclass
class InProcessMesh:
    """Every service running in this process on a free loopback port, all on
    one store. A context manager: leaving it stops them in the reverse of their
    start order, then closes the face-pipeline pool if start_in_process made it."""
    config: Config
    store: Store
    services: dict[str, RunningService] = field(default_factory=dict)
    own_pool: PipelinePool | None = None

    @property
    def ports(self) -> dict[str, int]:
        return {name: service.port for name, service in self.services.items()}

    def stop(self, grace: float | None = 0) -> None:
        while self.services:
            _name, service = self.services.popitem()  # the last started first
            service.stop(grace)
        if self.own_pool is not None:
            self.own_pool.close()
            self.own_pool = None

    def __enter__(self) -> InProcessMesh:
        return self

    def __exit__(self, *_exc_info) -> None:
        self.stop()


def start_in_process(config: Config, store: Store, pool: PipelinePool | None = None,
                     trainer_settings: TrainerSettings | None = None) -> InProcessMesh:
    """Starts query, ingest, trainer and classifier (in SERVICES order) on free
    loopback ports; ingest and classifier share one face-pipeline pool (`pool`,
    else a new one for `config`, closed with the mesh). The store stays the caller's."""
    from visage.faces.pool import PipelinePool

    own_pool = PipelinePool(config) if pool is None else None
    shared_pool = pool or own_pool
    mesh = InProcessMesh(config, store, own_pool=own_pool)
    options = {"ingest": {"pool": shared_pool}, "classifier": {"pool": shared_pool},
               "trainer": {"settings": trainer_settings}}
    try:
        for name, module in SERVICES:
            start = importlib.import_module(f"{module}.server").start
            mesh.services[name] = start(config, store, "127.0.0.1:0", **options.get(name, {}))
    except BaseException:
        mesh.stop()
        raise
    return mesh


def login_link(config: Config, auth: AuthConfig) -> str | None:
    """The UI's address with an admin token for whoever started the mesh (in the
    URL fragment, which browsers never send to a server; the UI moves it into
    sessionStorage and out of the address bar)."""
    if not auth.is_local:
        return None
    token = LocalIssuer(auth).mint(Role.ADMIN, ttl_seconds=LOGIN_LINK_SECONDS)
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    return f"http://{host}:{config.ports.gateway}/#token={token}"


def main() -> int:
    setup_logging("mesh")
    config = Config.from_env()
    auth = AuthConfig.from_env()
    if auth.is_local:
        LocalIssuer(auth).ensure()  # before any service or Envoy reads the keys
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    children: list[tuple[str, subprocess.Popen]] = []
    try:
        children = start_all(config)
        log.info("Visage is up: open http://%s:%d/", config.host, config.ports.gateway)
        link = login_link(config, auth)
        if link:
            print(f"\nVisage is up. Sign in to the UI as admin with this link (valid 12 h; "
                  f"`visage token create` makes more):\n\n    {link}\n", flush=True)
        while all(proc.poll() is None for _, proc in children):
            time.sleep(0.5)
        failed = [name for name, proc in children if proc.poll() is not None]
        log.error("%s exited; stopping the mesh", ", ".join(failed))
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        stop_all(children)


if __name__ == "__main__":
    sys.exit(main())
