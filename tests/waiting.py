"""Waiting for a condition in a test: polled until it holds, with a long hang guard only (nothing
is timed: a test passes however slowly a loaded machine gets there)."""
from __future__ import annotations

import time

HANG_GUARD_SECONDS = 240


def wait_until(condition, what: str, seconds: float = HANG_GUARD_SECONDS):
    """condition()'s first truthy value; AssertionError naming `what` past the hang guard."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within the hang guard of {seconds} s: {what}")
