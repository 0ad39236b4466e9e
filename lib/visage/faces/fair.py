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
The first request in that order that fits goes. Requests behind one that does
not fit (the head) may pass it only within the room the head leaves: the units
held by such passing requests never exceed capacity minus the head's cost, so
the head starts as soon as the requests ahead of it leave, never later.

The caller is named per gRPC call by visage.guard (CALLER): the address Envoy
verified (its x-visage-caller header; never a client's X-Forwarded-For), else the peer address."""
from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

CALLER: ContextVar[str] = ContextVar("visage_caller", default="")
MAX_REMEMBERED_CALLERS = 10_000


@dataclass
class _Request:
    start: float  # what the caller had been charged when this request arrived
    cost: int
    ticket: int  # arrival order: breaks ties

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
        self._passing = 0  # units held by requests admitted past a waiting one

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
            passing = self._admit(request)
        try:
            yield
        finally:
            with self._changed:
                self._free += cost
                self._passing -= cost if passing else 0
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
        head = None  # the first in order that does not fit
        for request in sorted(self._waiting, key=_Request.rank):
            if request.cost > self._free:
                head = head or request
            elif head is None or self._passing + request.cost <= self.capacity - head.cost:
                return request
        return None

    def _admit(self, request: _Request) -> bool:
        """Takes the request's units; True when it passed a waiting request."""
        self._waiting.remove(request)
        passing = any(waiting.rank() < request.rank() for waiting in self._waiting)
        self._free -= request.cost
        self._passing += request.cost if passing else 0
        self._virtual_time = max(self._virtual_time, request.start)
        if len(self._charged) > MAX_REMEMBERED_CALLERS:
            # A caller charged no further than the virtual time is tagged just like a new one.
            self._charged = {caller: tag for caller, tag in self._charged.items() if tag > self._virtual_time}
        self._changed.notify_all()  # room may remain for the next in line
        return passing
