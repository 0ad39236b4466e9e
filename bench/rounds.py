"""Repeated, alternating measurements: every figure of a bench is taken over
ROUNDS rounds (BENCH_ROUNDS, at least 3) and shown as min / median / max; the
sides of a comparison run in turn, their order reversed every other round
(AB BA AB ...), so load from the shared machine's other work hits both sides."""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
ROUNDS = max(3, int(os.environ.get("BENCH_ROUNDS", "3")))


def alternating(sides: dict[str, Callable[[], T]], rounds: int = ROUNDS) -> dict[str, list[T]]:
    """{side: [its figure in each round]}, the sides run in dict order, then reversed, and so on.
    A side measuring several figures at once returns them as a dict (by_figure regroups them)."""
    figures: dict[str, list[T]] = {name: [] for name in sides}
    names = list(sides)
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else names[::-1]:
            figures[name].append(sides[name]())
    return figures


def by_figure(rounds: list[dict[str, float]]) -> dict[str, list[float]]:
    """[{figure: value}, one per round] as {figure: [value in each round]}."""
    return {key: [round_[key] for round_ in rounds] for key in rounds[0]}


def ratios(values: list[float], baseline: list[float]) -> list[float]:
    """Each round's figure over the baseline's figure of the same round."""
    return [value / base for value, base in zip(values, baseline)]


def spread(values: list[float], digits: int = 2) -> str:
    """min / median / max."""
    return " / ".join(f"{v:,.{digits}f}" for v in (min(values), statistics.median(values), max(values)))


def p50_ms(call, calls: int) -> float:
    """Median milliseconds of `calls` calls of call() (one round's figure of a latency)."""
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1000


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"
