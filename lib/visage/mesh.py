"""`make run`: starts every service of the mesh on embedded defaults, then the
Envoy gateway, and supervises them: if one exits, everything stops (so a
broken mesh is never half-up). Ctrl-C / SIGTERM stops all gracefully."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from visage.config import Config
from visage.server import setup_logging

log = logging.getLogger("visage.mesh")

# Order matters: the query service migrates the store first; the gateway comes last.
SERVICES = [
    ("query", "visage_query"),
    ("ingest", "visage_ingest"),
    ("trainer", "visage_trainer"),
    ("classifier", "visage_classifier"),
]
READY_TIMEOUT_SECONDS = 120


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


def main() -> int:
    setup_logging("mesh")
    config = Config.from_env()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    children: list[tuple[str, subprocess.Popen]] = []
    try:
        children = start_all(config)
        log.info("Visage is up: open http://%s:%d/", config.host, config.ports.gateway)
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
