"""Following the event log for WatchEvents: one poller per service reads the
store every ~100 ms and wakes the watchers when the log grew (NewEvents), so
an idle watcher costs no store reads; each watcher hands on new events in log
order and stops as soon as its caller goes away."""
from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator

from visage.store import Store
from visage.store.records import EventRecord

POLL_SECONDS = 0.1
READ_BATCH = 1000
# The store may repeat events to a cursor it did not hand out (Cassandra's lag window; a late
# append's copies name their first copy as `origin`): remember this many recent events to drop repeats.
DEDUPE_WINDOW = 10_000
# A waiting watcher reads the store at least this often even without a wake-up
# (a safety net; wake-ups come from NewEvents within ~POLL_SECONDS).
REREAD_SECONDS = 10.0

log = logging.getLogger(__name__)


class InvalidCursor(ValueError):
    pass


def read_after(store: Store, cursor: str) -> list[EventRecord]:
    """One batch after the cursor; a cursor the backend cannot parse is the caller's error."""
    try:
        return store.read_events(cursor, READ_BATCH)
    except (ValueError, TypeError) as error:
        raise InvalidCursor(f"after_cursor {cursor[:80]!r} is not an event cursor; "
                            "pass one from an Event, or leave it empty to start from now") from error


class NewEvents:
    """One thread per service polls the log and bumps `generation` when it
    grew, waking every waiting watcher once; watchers wait on an event of their
    own instead of each polling the store. `wake(stop)` wakes only the watcher
    whose stop event that is (a cancelled one leaves: closing 1,000 watchers is
    1,000 wake-ups, not 1,000 × 1,000 on one shared condition); `poke` wakes all."""

    def __init__(self, store: Store, poll_seconds: float = POLL_SECONDS) -> None:
        self._store = store
        self._poll_seconds = poll_seconds
        self._lock = threading.Lock()
        self._waiting: dict[threading.Event, threading.Event] = {}  # a watcher's stop event -> its wake-up
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self.generation = 0
        self.wakeups = 0  # wake-ups handed out (tests: cancelling n watchers costs O(n))

    def start(self) -> None:
        """Idempotent: the first watcher starts the poller. Its starting cursor
        is read here, before the watcher's own first read, so every event the
        watcher's reads can miss comes after it and bumps `generation`."""
        with self._lock:
            if self._thread is None and not self._stopped.is_set():
                cursor = self._store.latest_cursor()
                self._thread = threading.Thread(target=self._poll, args=(cursor,), name="watch-events-poller",
                                                daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self.poke()

    def poke(self) -> None:
        """Wakes every waiting watcher (they re-check whether to stop)."""
        with self._lock:
            waiting = list(self._waiting.values())
            self.wakeups += len(waiting)
        for wake in waiting:
            wake.set()

    def cancel(self, stop: threading.Event) -> None:
        """A watcher's caller went away: sets its stop event and wakes it alone."""
        stop.set()
        self.wake(stop)

    def wake(self, stop: threading.Event) -> None:
        """Wakes the one watcher waiting with this stop event (set it first)."""
        with self._lock:
            wake = self._waiting.get(stop)
            if wake is not None:
                self.wakeups += 1
        if wake is not None:
            wake.set()

    def wait(self, seen_generation: int, stop: threading.Event, should_stop: Callable[[], bool]) -> bool:
        """Blocks until the log grew past `seen_generation`, the watcher must
        stop, or REREAD_SECONDS pass; True when the watcher must stop."""
        wake = threading.Event()
        with self._lock:
            # Checked under the lock that wake-ups take: none set after this is missed.
            if self.generation != seen_generation or stop.is_set() or should_stop():
                return stop.is_set() or should_stop()
            self._waiting[stop] = wake
        try:
            wake.wait(REREAD_SECONDS)
        finally:
            with self._lock:
                self._waiting.pop(stop, None)
        return stop.is_set() or should_stop()

    def _poll(self, cursor: str) -> None:
        while not self._stopped.wait(self._poll_seconds):
            try:
                batch = self._store.read_events(cursor, READ_BATCH)
            except Exception as error:  # noqa: BLE001 - a store hiccup; watchers re-read on their own too
                log.warning("event poller: store read failed: %r", error)
                continue
            if batch:
                cursor = batch[-1].cursor
                with self._lock:
                    self.generation += 1
                    waiting = list(self._waiting.values())
                    self.wakeups += len(waiting)
                for wake in waiting:
                    wake.set()


def follow(store: Store, after_cursor: str, types: frozenset[int], stop: threading.Event,
           should_stop: Callable[[], bool] = lambda: False,
           first_batch: list[EventRecord] | None = None,
           new_events: NewEvents | None = None) -> Iterator[EventRecord]:
    """Events after the cursor (of the given types; all when empty), then new
    ones as they are appended, until `stop` is set or `should_stop()` says so.
    Between reads it waits on `new_events` (else sleeps on `stop` for a poll
    interval); setting `stop` (plus a poke) ends the wait at once.
    `first_batch` is read_after(store, after_cursor) when the caller already
    read it (to validate the cursor before the stream opens)."""
    cursor = after_cursor
    recent: deque[str] = deque(maxlen=DEDUPE_WINDOW)
    seen: set[str] = set()
    seen_generation = new_events.generation if new_events else 0
    batch = first_batch if first_batch is not None else read_after(store, cursor)
    # A batch read before the generation was taken may miss an event the poller
    # already counted: read once more before the first wait.
    reread = first_batch is not None and new_events is not None
    while True:
        for record in batch:
            cursor = record.cursor
            event = record.origin or record.cursor  # one event, however many copies
            if event in seen:
                continue
            if len(recent) == recent.maxlen:
                seen.discard(recent[0])
            recent.append(event)
            seen.add(event)
            if not types or record.type in types:
                yield record
        if len(batch) < READ_BATCH and not reread:  # caught up: wait for more
            if _wait(new_events, seen_generation, stop, should_stop):
                return
        elif stop.is_set() or should_stop():
            return
        reread = False
        seen_generation = new_events.generation if new_events else 0
        batch = read_after(store, cursor)


def _wait(new_events: NewEvents | None, seen_generation: int, stop: threading.Event,
          should_stop: Callable[[], bool]) -> bool:
    if new_events is None:
        return stop.wait(POLL_SECONDS) or should_stop()
    return new_events.wait(seen_generation, stop, should_stop)
