"""CPU placement: the cores a process may run on (Linux CPU affinity).

Envoy and the Python services slow each other down when they share cores:
each run of one evicts the other's caches, and the scheduler keeps moving
Envoy's worker between cores. On a 2-core VM that triples Envoy's time per
proxied call (bench/bench_gateway.py). Giving the gateway cores of its own, as
Kubernetes' static CPU manager does for a Guaranteed pod, keeps its hop short.

VISAGE_GATEWAY_CPUS pins Envoy (and sets its worker count); VISAGE_SERVICE_CPUS
pins each `python -m visage_<service>`. Both take a Linux CPU list ("1",
"0-2,6"); unset, the OS places everything."""
from __future__ import annotations

import logging
import os

from visage import config

log = logging.getLogger(__name__)

GATEWAY_CPUS_ENV = config.env_name(config.GatewayConfig, "cpus")  # VISAGE_GATEWAY_CPUS
SERVICE_CPUS_ENV = config.env_name(config.ServerSettings, "cpus")  # VISAGE_SERVICE_CPUS


class PlacementError(ValueError):
    """A CPU list that is malformed or names cores this process may not use."""


def parse_cpu_list(text: str) -> frozenset[int]:
    """"0-2,5" -> {0, 1, 2, 5}, checked against the cores this process may use."""
    cpus: set[int] = set()
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high if dash else low)
        except ValueError:
            raise PlacementError(f"not a CPU list: {text!r} (expected e.g. '1' or '0-2,5')") from None
        if first < 0 or last < first:
            raise PlacementError(f"not a CPU range: {part.strip()!r} in {text!r}")
        cpus.update(range(first, last + 1))
    available = os.sched_getaffinity(0)
    if unavailable := cpus - available:
        raise PlacementError(f"CPU(s) {sorted(unavailable)} in {text!r} are not available here "
                             f"(available: {sorted(available)})")
    return frozenset(cpus)


def cpus_from_env(name: str) -> frozenset[int] | None:
    """The CPU set the variable `name` (GATEWAY_CPUS_ENV or SERVICE_CPUS_ENV) names,
    or None when it is unset or empty. For a process that is starting: a bad list is
    logged, naming the variable, and the process exits with status 2."""
    text = config.read(name).strip()
    try:
        return parse_cpu_list(text) if text else None
    except PlacementError as error:
        log.error("%s: %s", name, error)
        raise SystemExit(2) from None


def pin_this_process(cpus: frozenset[int] | None) -> None:
    """Restricts this process to `cpus`: every thread it has (affinity is per
    thread on Linux) and so every thread and child started later."""
    if cpus:
        for thread in os.listdir("/proc/self/task"):
            os.sched_setaffinity(int(thread), cpus)
