"""Cassandra's exact event appends: an append acknowledged late is appended again (readers may
have read past its id before it landed), every copy names the first as its origin, and every
reader delivers the event once: positioned before, between or after the copies, having read
past the first id before it landed, reading from the start one event at a time, or with
retention having removed the first copy. The slow acknowledgement is injected through the
store's clock (its hooks run between stamping, writing and copying), never waited for."""
from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from visage.store.cassandra import EVENT_BUCKET_S, EVENT_LAG_S, CassandraStore
from visage.store.records import EventRecord
from visage.v1 import resources_pb2 as pb

SUBJECT = "late-acknowledged"


class SlowAcknowledgement:
    """A clock for append_event whose first append's id is stamped `stamped_ago` seconds before
    it is written (so its acknowledgement is that late). `before_write` runs after the id is
    stamped, before the row is written; `before_copy` after it is written, before the copy. Calls
    made from inside a hook (a hook's own appends) read the real time."""

    def __init__(self, stamped_ago: float, before_write: Callable[[], None] = lambda: None,
                 before_copy: Callable[[], None] = lambda: None):
        self.stamped_ago = stamped_ago
        self._hooks = [before_write, before_copy]
        self._inside = False
        self.copy_made = False

    def __call__(self) -> float:
        now = time.time()
        if self._inside or not self._hooks:
            return now
        hook = self._hooks.pop(0)
        self._inside = True
        try:
            hook()
        finally:
            self._inside = False
        if self._hooks:  # the first call stamps the first copy
            return now - self.stamped_ago
        self.copy_made = True
        return time.time()  # the acknowledgement, `stamped_ago` (and the hooks' time) after the stamp


class Reader:
    """One consumer following the log: everything read_events delivered to it, by subject."""

    def __init__(self, store: CassandraStore, cursor: str = ""):
        self.store, self.cursor, self.subjects = store, cursor, []

    def read(self, limit: int = 100) -> list[EventRecord]:
        got: list[EventRecord] = []
        while batch := self.store.read_events(self.cursor, limit):
            got += batch
            self.cursor = batch[-1].cursor
        self.subjects += [event.subject for event in got]
        return got


def append_late(store: CassandraStore, stamped_ago: float, before_write=lambda: None,
                before_copy=lambda: None) -> EventRecord:
    clock = SlowAcknowledgement(stamped_ago, before_write, before_copy)
    store.clock = clock
    try:
        event = store.append_event(pb.EVENT_TYPE_FACE_LABELLED, SUBJECT, {"persona_id": "p"})
    finally:
        store.clock = time.time
    assert clock.copy_made
    return event


def append_at(store: CassandraStore, seconds_ago: float, subject: str) -> EventRecord:
    """An event stamped that long ago (a reader's position before the late one's id)."""
    store.clock = lambda: time.time() - seconds_ago
    try:
        return store.append_event(pb.EVENT_TYPE_PERSONA_CREATED, subject)
    finally:
        store.clock = time.time


def stored_copies(store: CassandraStore) -> list:
    return [row for row in store._session.execute(f"SELECT id, origin, subject FROM {store.keyspace}.events_by_minute")
            if row.subject == SUBJECT]


# The first copy lands inside the lag window of readers that passed it (1.5 s), or before it (5 s).
@pytest.mark.parametrize("stamped_ago", [0.75 * EVENT_LAG_S, 2.5 * EVENT_LAG_S])
def test_a_late_acknowledged_event_is_delivered_once_to_every_reader(cassandra_store, cassandra_config, stamped_ago):
    store = cassandra_store
    append_at(store, 4 * EVENT_LAG_S, "before")
    start = store.read_events("", 100)[-1].cursor
    before, between, passer = Reader(store, start), Reader(store, start), Reader(store, start)
    passed = []

    def pass_the_stamp():  # an event stamped after the first copy's id lands and is read first
        passed.append(store.append_event(pb.EVENT_TYPE_PERSONA_CREATED, "passer"))
        passer.read()

    copy = append_late(store, stamped_ago, before_write=pass_the_stamp, before_copy=between.read)
    first, second = sorted(stored_copies(store), key=lambda row: row.id.time)
    assert first.origin is None and second.origin == first.id  # two copies, the later names the first
    assert copy.origin and copy.origin < passed[0].cursor < copy.cursor
    assert passer.subjects == ["passer"]  # it read past the first copy's id before the row landed
    after = Reader(store, store.latest_cursor())

    for reader in (before, between, passer, after):
        reader.read()
    store.append_event(pb.EVENT_TYPE_PERSONA_CREATED, "next")
    for reader in (before, between, passer, after):
        reader.read()
    assert before.subjects.count(SUBJECT) == 1 and before.subjects[-1] == "next"
    assert between.subjects.count(SUBJECT) == 1 and between.subjects[-1] == "next"
    assert passer.subjects.count(SUBJECT) == 1 and passer.subjects[-1] == "next"
    assert after.subjects == ["next"]

    # From the start, in one batch or one event at a time, in this process or another one.
    for limit in (100, 1):
        reader = Reader(store)
        reader.read(limit)
        assert reader.subjects == ["before", SUBJECT, "passer", "next"]
    other = CassandraStore(cassandra_config)
    try:
        reader = Reader(other)
        reader.read()
        assert reader.subjects.count(SUBJECT) == 1
    finally:
        other.close()


def test_readers_skip_the_copy_of_an_event_they_got_long_before(cassandra_store):
    """A reader that got the first copy and then moved on past its lag window still skips the copy."""
    store = cassandra_store
    append_at(store, 10 * EVENT_LAG_S, "before")
    reader = Reader(store, store.read_events("", 100)[-1].cursor)

    def read_on():  # the first copy is visible: the reader gets it, then later events, batch by batch
        reader.read()
        for i in range(3):
            store.append_event(pb.EVENT_TYPE_PERSONA_CREATED, f"later{i}")
            reader.read()

    # The first copy lies before the reader's lag window (and its last batch's) when the copy lands.
    append_late(store, 3 * EVENT_LAG_S, before_copy=read_on)
    assert reader.subjects == [SUBJECT, "later0", "later1", "later2"]
    assert reader.read() == []


def test_the_shared_follower_delivers_one_event_per_origin(cassandra_store, cassandra_config):
    """The query service's WatchEvents follower, from a cursor its store did not hand out
    (a client reconnecting to another replica) with the first copy in the lag window."""
    import queue

    from visage_query.events import EventLog

    store = cassandra_store
    start = append_at(store, 4 * EVENT_LAG_S, "before").cursor
    append_late(store, 0.75 * EVENT_LAG_S)
    store.append_event(pb.EVENT_TYPE_PERSONA_CREATED, "next")
    other = CassandraStore(cassandra_config)
    log = EventLog(other)
    delivered: queue.Queue = queue.Queue()  # records, or the error that ended the watch
    try:
        watch = log.watch(start, frozenset(), log.read(start), delivered.put, delivered.put)
        subjects = [delivered.get(timeout=120).subject for _ in range(2)]
        watch.close()
        assert subjects == [SUBJECT, "next"]
    finally:
        log.stop(RuntimeError("test over"))
        other.close()


def test_compaction_removes_copies_and_a_copy_outlives_its_compacted_first(cassandra_store):
    store = cassandra_store
    append_at(store, 2 * EVENT_BUCKET_S, "before")
    follower = Reader(store, store.read_events("", 100)[-1].cursor)
    # The first copy is stamped in an earlier minute partition than its copy.
    copy = append_late(store, EVENT_BUCKET_S + EVENT_LAG_S, before_copy=follower.read)
    assert follower.subjects == [SUBJECT]
    copy_minute = int(copy.create_time // EVENT_BUCKET_S) * EVENT_BUCKET_S
    assert store.compact_events(copy_minute) == 2  # "before" and the first copy, in earlier minutes
    remaining = stored_copies(store)
    assert len(remaining) == 1 and remaining[0].origin is not None
    fresh = Reader(store)
    fresh.read()
    assert fresh.subjects.count(SUBJECT) == 1  # the copy stands in for its compacted first
    assert follower.read() == []  # a reader that got the first copy still skips it
    assert store.compact_events(time.time() + 2 * EVENT_BUCKET_S) == 1
    assert stored_copies(store) == [] and store.read_events("", 100) == []
