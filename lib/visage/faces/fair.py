"""Fair admission to the face workers: one caller sending many expensive
images (a 36-megapixel photo costs ~2 s of CPU however few bytes it has)
must not keep another caller's image waiting behind all of them.

`FairSlots` hands out a fixed number of slots; when one frees, the waiting
caller with the fewest images in flight goes first, then the one served
least recently (round robin), then whoever waited longest. The caller is named per gRPC call by visage.guard (CALLER): the
client address Envoy forwards (x-forwarded-for), else the peer address."""
from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

CALLER: ContextVar[str] = ContextVar("visage_caller", default="")
MAX_REMEMBERED_CALLERS = 10_000


class FairSlots:
    def __init__(self, slots: int) -> None:
        self._free = slots
        self._changed = threading.Condition()
        self._in_flight: Counter[str] = Counter()
        self._waiting: dict[int, str] = {}  # ticket -> caller; tickets grow with arrival
        self._tickets = itertools.count()
        self._grants = itertools.count()
        self._last_grant: dict[str, int] = {}  # caller -> when it last got a slot

    @contextmanager
    def slot(self, caller: str | None = None) -> Iterator[None]:
        caller = CALLER.get() if caller is None else caller
        with self._changed:
            ticket = next(self._tickets)
            self._waiting[ticket] = caller
            self._changed.wait_for(lambda: self._free > 0 and self._next_ticket() == ticket)
            del self._waiting[ticket]
            self._free -= 1
            self._in_flight[caller] += 1
            self._last_grant[caller] = next(self._grants)
            if len(self._last_grant) > MAX_REMEMBERED_CALLERS:
                self._forget_idle_callers()
            self._changed.notify_all()  # a slot may remain for the next in line
        try:
            yield
        finally:
            with self._changed:
                self._free += 1
                self._in_flight[caller] -= 1
                if not self._in_flight[caller]:
                    del self._in_flight[caller]
                self._changed.notify_all()

    @property
    def free(self) -> int:
        with self._changed:
            return self._free

    def waiting(self) -> int:
        with self._changed:
            return len(self._waiting)

    def _next_ticket(self) -> int:
        def rank(ticket: int) -> tuple[int, int, int]:
            caller = self._waiting[ticket]
            return self._in_flight[caller], self._last_grant.get(caller, -1), ticket
        return min(self._waiting, key=rank)

    def _forget_idle_callers(self) -> None:
        active = set(self._in_flight) | set(self._waiting.values())
        self._last_grant = {caller: grant for caller, grant in self._last_grant.items() if caller in active}
