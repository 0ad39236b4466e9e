"""Following the event log, for WatchEvents and the thumbnail cache: one poller
per query service (EventLog, from its first user on) reads the store every ~100 ms and
hands each new batch to its subscribers, and wakes the open watches when the
log grew. A watch (Watch) holds no thread while idle (visage.nonblocking): a
wake-up runs one delivery on a small shared pool, which reads after the watch's
cursor (or takes the poller's batch when it is there), sends the new events in
log order and returns."""
from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from visage.guard import ElasticThreadPool
from visage.nonblocking import Stream
from visage.store import Store
from visage.store.records import EventRecord

POLL_SECONDS = 0.1
READ_BATCH = 1000
# The store may repeat events to a cursor it did not hand out (Cassandra's lag window; a late
# append's copies name their first copy as `origin`): remember this many recent events to drop repeats.
DEDUPE_WINDOW = 10_000
# Deliveries running at once, all watches together: a delivery reads and sends a few small
# messages, so a few threads serve thousands of watches; they end when idle.
DELIVERY_THREADS = 16

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


class EventLog:
    """The service's one poller of the event log: subscribers get every batch
    appended after `start` (on the poller's thread: keep them quick), and open
    watches are woken (each alone: opening or closing one costs O(1))."""

    def __init__(self, store: Store, poll_seconds: float = POLL_SECONDS,
                 delivery_threads: int = DELIVERY_THREADS) -> None:
        self._store = store
        self._poll_seconds = poll_seconds
        self._lock = threading.Lock()
        self._watches: set[Watch] = set()
        self._subscribers: list[Callable[[list[EventRecord]], None]] = []
        self._stopped = threading.Event()
        self._stop_error: Exception | None = None
        self._thread: threading.Thread | None = None
        self.deliveries = ElasticThreadPool(delivery_threads, thread_name_prefix="watch_events")

    def start(self) -> "EventLog":
        """Idempotent: the first watch or thumbnail starts it (from then on it reads
        every event; before, nothing). The poller's cursor is read here: every event
        a reader who started after this may miss comes later and wakes the watches."""
        with self._lock:
            if self._thread is None and not self._stopped.is_set():
                cursor = self._store.latest_cursor()
                self._thread = threading.Thread(target=self._poll, args=(cursor,), name="event-log-poller",
                                                daemon=True)
                self._thread.start()
        return self

    def subscribe(self, callback: Callable[[list[EventRecord]], None]) -> None:
        with self._lock:
            self._subscribers.append(callback)

    def stop(self, error: Exception) -> None:
        """Ends every open watch with `error` (its caller reconnects elsewhere) and the poller;
        a watch opened from now on ends with it at once."""
        with self._lock:
            self._stop_error = error
            watches = list(self._watches)
        self._stopped.set()
        for watch in watches:
            watch.end(error)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    @property
    def open_watches(self) -> int:
        with self._lock:
            return len(self._watches)

    def watch(self, cursor: str, types: frozenset[int], first_batch: list[EventRecord],
              send: Callable[[EventRecord], None], finish: Callable[[Exception | None], None]) -> "Watch":
        """A watch from `cursor` (first_batch: read_after(store, cursor), already read);
        `send` gets its events, `finish` the error that ends it. Its first delivery starts now."""
        watch = Watch(self, cursor, types, first_batch, send, finish)
        with self._lock:
            stop_error = self._stop_error
            if stop_error is None:
                self._watches.add(watch)
        if stop_error is not None:
            watch.end(stop_error)
        else:
            watch.wake()
        return watch

    def forget(self, watch: "Watch") -> None:
        with self._lock:
            self._watches.discard(watch)

    def read(self, cursor: str) -> list[EventRecord]:
        return read_after(self._store, cursor)

    def _poll(self, cursor: str) -> None:
        while not self._stopped.wait(self._poll_seconds):
            try:
                while batch := self._store.read_events(cursor, READ_BATCH):
                    self._hand_on(cursor, batch)
                    cursor = batch[-1].cursor
                    if len(batch) < READ_BATCH:
                        break
            except Exception as error:  # noqa: BLE001 - a store hiccup: the cursor stays, read again next round
                log.warning("event log poller: store read failed: %r", error)

    def _hand_on(self, cursor: str, batch: list[EventRecord]) -> None:
        with self._lock:
            subscribers, watches = list(self._subscribers), list(self._watches)
        for subscriber in subscribers:
            try:
                subscriber(batch)
            except Exception:  # noqa: BLE001 - one subscriber's bug must not stop the others
                log.exception("an event log subscriber failed")
        for watch in watches:
            watch.offer(cursor, batch)


class Watch(Stream):
    """One open WatchEvents stream: its cursor and the events it sent lately
    (a delivery at a time, visage.nonblocking.Stream: its events go out in log order)."""

    def __init__(self, log_: EventLog, cursor: str, types: frozenset[int], first_batch: list[EventRecord],
                 send: Callable[[EventRecord], None], finish: Callable[[Exception | None], None]) -> None:
        super().__init__(log_.deliveries, send, finish)
        self._log = log_
        self._types = types
        self._cursor = cursor
        self._recent: deque[str] = deque(maxlen=DEDUPE_WINDOW)
        self._seen: set[str] = set()
        self._first_batch: list[EventRecord] | None = first_batch
        self._offered: tuple[str, list[EventRecord]] | None = None  # the poller's batch and the cursor before it
        self._offer_lock = threading.Lock()

    def offer(self, cursor: str, batch: list[EventRecord]) -> None:
        """The poller read `batch` after `cursor`: the log grew; deliver (from it, if this watch is there)."""
        with self._offer_lock:
            self._offered = (cursor, batch)
        self.wake()

    def close(self) -> None:
        super().close()
        self._log.forget(self)

    def deliver(self) -> None:
        if self._first_batch is not None:
            # Read before this watch could be woken: read once more after it.
            batch, self._first_batch = self._first_batch, None
            self.again()
        else:
            with self._offer_lock:
                offered, self._offered = self._offered, None
            if offered is not None and offered[0] == self._cursor:
                batch = offered[1]  # what this watch would read itself: no read per watch
            else:
                batch = self._log.read(self._cursor)
        if len(batch) == READ_BATCH:
            self.again()  # more to read before waiting
        self._send_new(batch)

    def _send_new(self, batch: list[EventRecord]) -> None:
        for record in batch:
            self._cursor = record.cursor
            event = record.origin or record.cursor  # one event, however many copies
            if event in self._seen:
                continue
            if len(self._recent) == self._recent.maxlen:
                self._seen.discard(self._recent[0])
            self._recent.append(event)
            self._seen.add(event)
            if not self._types or record.type in self._types:
                self.send(record)
