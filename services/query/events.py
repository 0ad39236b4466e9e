"""Following the event log for WatchEvents: poll the store every ~100 ms,
hand on new events in log order, stop as soon as the caller goes away."""
from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator

from visage.store import Store
from visage.store.records import EventRecord

POLL_SECONDS = 0.1
READ_BATCH = 1000
# The store is at-least-once: remember this many recent cursors to drop repeats.
DEDUPE_WINDOW = 10_000


class InvalidCursor(ValueError):
    pass


def read_after(store: Store, cursor: str) -> list[EventRecord]:
    """One batch after the cursor; a cursor the backend cannot parse is the caller's error."""
    try:
        return store.read_events(cursor, READ_BATCH)
    except (ValueError, TypeError) as error:
        raise InvalidCursor(f"after_cursor {cursor[:80]!r} is not an event cursor; "
                            "pass one from an Event, or leave it empty to start from now") from error


def follow(store: Store, after_cursor: str, types: frozenset[int], stop: threading.Event,
           should_stop: Callable[[], bool] = lambda: False,
           first_batch: list[EventRecord] | None = None) -> Iterator[EventRecord]:
    """Events after the cursor (of the given types; all when empty), then new
    ones as they are appended, until `stop` is set or `should_stop()` says so.
    Sleeps on `stop` between polls, so setting it ends the wait at once.
    `first_batch` is read_after(store, after_cursor) when the caller already
    read it (to validate the cursor before the stream opens)."""
    cursor = after_cursor
    recent: deque[str] = deque(maxlen=DEDUPE_WINDOW)
    seen: set[str] = set()
    batch = first_batch if first_batch is not None else read_after(store, cursor)
    while True:
        for record in batch:
            cursor = record.cursor
            if record.cursor in seen:
                continue
            if len(recent) == recent.maxlen:
                seen.discard(recent[0])
            recent.append(record.cursor)
            seen.add(record.cursor)
            if not types or record.type in types:
                yield record
        if len(batch) < READ_BATCH:  # caught up: wait for more
            if stop.wait(POLL_SECONDS) or should_stop():
                return
        elif stop.is_set() or should_stop():
            return
        batch = read_after(store, cursor)
