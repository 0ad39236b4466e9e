"""`make run`: starts every service of the mesh on embedded defaults, then the
Envoy gateway, and supervises them: a child that exits is started again after
a bounded backoff; every child dies with the supervisor, even on SIGKILL
(visage.lifeline). It refuses to start, naming them, when another process
already listens on its ports. Ctrl-C / SIGTERM stops all gracefully.

The terminal shows a line per service as it comes up, then, once the gateway
answers through it, the sign-in link, last; each child's log (services' JSON
lines, Envoy's access log) goes to `<data dir>/logs/<name>.log`, or to the
terminal with VISAGE_RUN_SHOW_LOGS.

`start_in_process` is the same mesh (without the gateway) inside one process,
for tests and benchmarks."""
from __future__ import annotations

import importlib
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from visage import lifeline
from visage.auth.local import LocalIssuer
from visage.datadir import secure_tree
from visage.auth.roles import Role
from visage.auth.tokens import AuthConfig
from visage.config import Config, GatewayConfig, RunSettings, env_name
from visage.server import RunningService
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
# A crashed child is started again after these delays (then the last one, for
# ever); a child that stayed up HEALTHY_RUN_SECONDS starts again from the first.
RESTART_DELAYS_SECONDS = (1, 2, 4, 8, 16, 30)
HEALTHY_RUN_SECONDS = 60
SUPERVISE_INTERVAL_SECONDS = 0.5
LOGIN_LINK_SECONDS = 12 * 3600
LOG_TAIL_LINES = 10  # of a child's log, shown when it exits
UI_PAGE = re.compile(r"/[A-Za-z0-9/_-]*")  # a page the sign-in link may open (the UI's #/... routes)


class ChildExited(RuntimeError):
    """A child exited before it was serving."""


def wait_serving(address: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Until the health check at `address` says SERVING; fails at once if
    `process` (the one meant to serve there) exits first."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if process is not None and process.poll() is not None:
                raise ChildExited(f"the process meant to serve {address} exited with {process.returncode}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} not serving after {timeout:.0f}s")
            time.sleep(0.2)


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def ports_in_use(config: Config) -> list[str]:
    """'name port' for each mesh port another process already listens on."""
    names = [name for name, _ in SERVICES] + ["gateway"]
    return [f"{name} {getattr(config.ports, name)}" for name in names
            if port_in_use(config.host, getattr(config.ports, name))]


@dataclass
class Child:
    """One supervised process: a service (with the address its health answers
    on) or the gateway. It dies with the supervisor (visage.lifeline)."""
    name: str
    module: str
    health_address: str | None = None
    log_path: Path | None = None  # its stdout and stderr, appended; None: the terminal
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    quick_failures: int = 0
    restart_at: float | None = None

    def start(self) -> None:
        # Appended (a restart adds to it), readable by this user only, like the rest of the data dir.
        log = os.fdopen(os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") \
            if self.log_path else None
        try:
            self.process = subprocess.Popen([sys.executable, "-m", self.module], env=os.environ.copy(),
                                            stdout=log, stderr=subprocess.STDOUT if log else None,
                                            preexec_fn=lifeline.preexec_die_with_parent(signal.SIGTERM))
        finally:
            if log:
                log.close()  # the child holds its own descriptor
        self.started_at = time.monotonic()
        self.restart_at = None

    def log_tail(self) -> str:
        """The last lines of its log file (indented), to show why it exited."""
        if self.log_path is None or not self.log_path.is_file():
            return ""
        lines = self.log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        return "".join(f"\n    {line}" for line in lines) + f"\n  (its whole log: {self.log_path})"

    def check(self, now: float) -> None:
        """Schedules a restart once the child has exited; starts it when due."""
        if self.restart_at is None and self.process.poll() is not None:
            if now - self.started_at >= HEALTHY_RUN_SECONDS:
                self.quick_failures = 0
            delay = RESTART_DELAYS_SECONDS[min(self.quick_failures, len(RESTART_DELAYS_SECONDS) - 1)]
            self.quick_failures += 1
            log.error("%s exited with %d; restarting it in %ds%s", self.name, self.process.returncode, delay,
                      self.log_tail())
            self.restart_at = now + delay
        elif self.restart_at is not None and now >= self.restart_at:
            self.start()
            log.info("%s restarted (pid %d)", self.name, self.process.pid)


def say(line: str) -> None:
    """A line for the person who typed `make run`."""
    print(line, flush=True)


def log_dir(config: Config) -> Path | None:
    """Where the children's logs go (None: the terminal, VISAGE_RUN_SHOW_LOGS)."""
    if config.run.show_logs:
        return None
    path = config.data_dir / "logs"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def start_all(config: Config, gateway_url: str) -> list[Child]:
    """Starts each service in order, waiting until it serves, then the gateway,
    waiting until it answers at `gateway_url`; a line for each. On failure, what
    was started is stopped again."""
    children: list[Child] = []
    logs = log_dir(config)
    try:
        for name, module in SERVICES:
            address = f"{config.host}:{getattr(config.ports, name)}"
            child = Child(name, module, address, logs / f"{name}.log" if logs else None)
            children.append(child)
            child.start()
            wait_serving(address, READY_TIMEOUT_SECONDS, child.process)
            say(f"  {name:<11} serving on {address}")
        gateway = Child("gateway", "visage_gateway", log_path=logs / "gateway.log" if logs else None)
        children.append(gateway)
        gateway.start()
        wait_answering(gateway_url, READY_TIMEOUT_SECONDS, gateway.process)
        say(f"  {'gateway':<11} {gateway_url} (UI, REST /v1, gRPC)")
    except BaseException as error:
        stop_all(children)
        if isinstance(error, (ChildExited, TimeoutError)):  # say why, from the child's own log
            raise type(error)(f"{error}{children[-1].log_tail()}") from None
        raise
    return children


def wait_answering(url: str, timeout: float, process: subprocess.Popen) -> None:
    """Until `url` answers 200 (Envoy listens, routes and serves the UI); fails at
    once if `process` (the gateway) exits first."""
    deadline = time.monotonic() + timeout
    unverified = ssl.create_default_context()  # our own gateway on this machine: is it up, not who it is
    unverified.check_hostname, unverified.verify_mode = False, ssl.CERT_NONE
    while True:
        if process.poll() is not None:
            raise ChildExited(f"the gateway exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2, context=unverified) as response:
                if response.status == 200:
                    return
        except OSError:  # refused, reset, or an HTTP error status: not yet
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the gateway did not answer at {url} within {timeout:.0f}s")
        time.sleep(0.2)


def stop_all(children: list[Child]) -> None:
    running = [child for child in reversed(children) if child.process is not None]
    for child in running:
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    for child in running:
        try:
            child.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in time; killing it", child.name)
            child.process.kill()
            child.process.wait()


def supervise(children: list[Child]) -> None:
    """Forever (until SIGTERM/SIGINT): restarts any child that exits, with a
    bounded backoff, so one crash never takes the rest of the mesh down."""
    while True:
        now = time.monotonic()
        for child in children:
            child.check(now)
        time.sleep(SUPERVISE_INTERVAL_SECONDS)


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


def gateway_url(config: Config) -> str:
    """The UI's address on this machine (the gateway's host, or loopback when it binds every address)."""
    scheme = "https" if GatewayConfig.read("tls_cert") else "http"
    host = GatewayConfig.read("host") or config.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"{scheme}://{host}:{config.ports.gateway}/"


def login_link(url: str, auth: AuthConfig, page: str = "/") -> str | None:
    """The UI's address with an admin token for whoever started the mesh (in the
    URL fragment, which browsers never send to a server; the UI moves it into
    sessionStorage and out of the address bar), then opens `page` (e.g. /unknown)."""
    if not auth.is_local:
        return None
    token = LocalIssuer(auth).mint(Role.ADMIN, ttl_seconds=LOGIN_LINK_SECONDS)
    return f"{url}#token={token}" + (f"&open={page}" if page != "/" else "")


def setup_terminal_logging() -> None:
    """The supervisor's own warnings and errors, as plain lines (children log JSON to their files)."""
    logging.basicConfig(level=logging.INFO, format="visage: %(message)s", stream=sys.stderr, force=True)


def main() -> int:
    setup_terminal_logging()
    config = Config.from_env()
    if not UI_PAGE.fullmatch(config.run.open_page):
        log.error("%s=%r is not a page of the UI: give its path, e.g. /unknown",
                  env_name(RunSettings, "open_page"), config.run.open_page)
        return 2
    taken = ports_in_use(config)
    if taken:
        log.error("cannot start: another process already listens on %s (host %s). Stop it (an earlier "
                  "`make run`?) or choose other ports with VISAGE_<NAME>_PORT", ", ".join(taken), config.host)
        return 2
    auth = AuthConfig.from_env()
    secure_tree(config.data_dir)  # 0700 / 0600 on every start, also what an older version left readable
    if auth.is_local:
        LocalIssuer(auth).ensure()  # before any service or Envoy reads the keys
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    children: list[Child] = []
    url = gateway_url(config)
    logs = "on this terminal" if config.run.show_logs else f"in {config.data_dir / 'logs'}/"
    say(f"Starting Visage (data in {config.data_dir}/, logs {logs}):")
    try:
        children = start_all(config, url)
        link = login_link(url, auth, config.run.open_page)
        if link:
            say(f"\nVisage is up. Sign in to the UI as admin with this link (valid 12 h; "
                f"`visage token create` makes more):\n\n    {link}\n")
        else:
            say(f"\nVisage is up: {url} (sign in with a token of your issuer)\n")
        supervise(children)
    except KeyboardInterrupt:
        return 0
    except (ChildExited, TimeoutError) as error:
        log.error("the mesh did not start: %s", error)
        return 1
    finally:
        stop_all(children)
    return 0


if __name__ == "__main__":
    sys.exit(main())
