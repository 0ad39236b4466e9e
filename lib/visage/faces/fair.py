"""Fair admission to the face workers: one caller sending many expensive
images (a 36-megapixel photo costs ~0.7 s of CPU however few bytes it has)
must not keep another caller's image waiting behind all of them.

Callers are charged by cost, not per image. `FairSlots` has a capacity in
cost units and an image holds `cost` of them while it runs, so a few heavy
images fill it where many light ones fit, and a light image finds room beside
a heavy one instead of waiting for it to finish.

Who goes next is start-time fair queueing: a request is tagged on arrival
with what its caller has been charged so far (never less than the tag of the
request admitted last, so an idle caller saves up no credit); the lowest tag
goes first, ties in arrival order. A caller sending heavy images thus gets proportionally
fewer turns, and a light caller's request overtakes a heavy caller's queue.
The first request in that order that fits goes; one that does not fit lets at
most MAX_PASSES others go past it, then everyone waits until it fits, so a
heavy image is delayed, never starved.

The caller is named per gRPC call by visage.guard (CALLER): the client address
Envoy forwards (x-forwarded-for), else the peer address."""
from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

CALLER: ContextVar[str] = ContextVar("visage_caller", default="")
MAX_REMEMBERED_CALLERS = 10_000
MAX_PASSES = 8


@dataclass
class _Request:
    start: float  # what the caller had been charged when this request arrived
    cost: int
    ticket: int  # arrival order: breaks ties
    passed_by: int = 0  # requests admitted ahead of it while it did not fit

    def rank(self) -> tuple[float, int]:
        return self.start, self.ticket


class FairSlots:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._free = capacity
        self._changed = threading.Condition()
        self._waiting: list[_Request] = []
        self._tickets = itertools.count()
        self._virtual_time = 0.0  # the highest start tag admitted so far
        self._charged: dict[str, float] = {}  # caller -> start + cost of its latest request

    @contextmanager
    def slot(self, caller: str | None = None, cost: int = 1) -> Iterator[None]:
        """Holds `cost` units (1 to capacity) while the block runs."""
        caller = CALLER.get() if caller is None else caller
        cost = min(max(1, cost), self.capacity)
        with self._changed:
            request = _Request(max(self._virtual_time, self._charged.get(caller, 0.0)), cost, next(self._tickets))
            self._charged[caller] = request.start + cost
            self._waiting.append(request)
            self._changed.wait_for(lambda: self._next() is request)
            self._admit(request)
        try:
            yield
        finally:
            with self._changed:
                self._free += cost
                self._changed.notify_all()

    @property
    def free(self) -> int:
        with self._changed:
            return self._free

    def waiting(self) -> int:
        with self._changed:
            return len(self._waiting)

    def _next(self) -> _Request | None:
        """The waiting request to admit now, if any."""
        for request in sorted(self._waiting, key=_Request.rank):
            if request.cost <= self._free:
                return request
            if request.passed_by >= MAX_PASSES:
                return None  # everyone waits until it fits
        return None

    def _admit(self, request: _Request) -> None:
        for ahead in self._waiting:
            if ahead.rank() < request.rank():
                ahead.passed_by += 1
        self._waiting.remove(request)
        self._free -= request.cost
        self._virtual_time = max(self._virtual_time, request.start)
        if len(self._charged) > MAX_REMEMBERED_CALLERS:
            # A caller charged no further than the virtual time is tagged just like a new one.
            self._charged = {caller: tag for caller, tag in self._charged.items() if tag > self._virtual_time}
        self._changed.notify_all()  # room may remain for the next in line
