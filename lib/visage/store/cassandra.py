"""Scale-out store on Apache Cassandra (also Azure Cosmos DB's Cassandra API and
Azure Managed Instance for Apache Cassandra). Same semantics as sqlite.py, without
multi-row transactions; lightweight transactions (LWT, compare-and-set) exactly where a
race would lose or duplicate data (see "Conditional writes" below):

- Commit points: every multi-row write puts its dependent rows first and the row
  that makes them visible last (image chunks + faces, then the image row; artifact
  chunks, then the version row), so a crash leaves invisible leftovers that a
  retry overwrites, never a half-visible record. Rows stay under 2 MB: image
  bytes and model artifacts are split into 1 MB chunks.
- Index tables (labels by persona, predictions by persona, unknown faces, images and
  jobs by time) are written before their base rows and checked against them on read.
- Unknown faces (base.is_unknown) are indexed in UNKNOWN_BUCKETS partitions clustered
  newest image first; a page reads each partition from the cursor and merges them.
  A write that may make a face unknown inserts its row before the change; one that makes
  it known deletes the row after the change (only rows that existed: no needless tombstones).
  So a crash or a race leaves only rows too many, never too few, and readers check every
  row against the base tables (a face, its image row, labels and prediction) and skip stale
  ones; a page is exact either way. (Two writers changing one face at the same moment can,
  in a window of one read-to-delete, both decide on stale reads; the face's next write repairs it.)
- Bulk writes go out as many requests in flight at once (a bounded window), and rows
  that share a partition travel in one unlogged batch (one request, one replica set);
  rows of different partitions are never batched together. Predictions are stored in
  PREDICTION_BUCKETS partitions keyed by a hash of the face id, so the classifier's
  re-classification writes them a few dozen rows per request instead of one.
- Portable CQL: only what Apache Cassandra 3-5, Azure Managed Instance for Apache Cassandra
  AND Azure Cosmos DB for Apache Cassandra all accept (visage.store.portable_cql states the
  limits and tests/store/test_portable_cql.py checks every statement sent against them):
  protocol v4, unlogged single-partition batches only, conditions only as IF [NOT] EXISTS or
  equalities on regular columns, no conditional deletes, at most 25 tables. Consistency
  levels come from the config (README "Choosing a Cassandra"); requests answered Overloaded
  (Cosmos DB's 429) are sent again after a backoff (_Overload).
- Conditional writes (LWT; they run at the serial consistency, and the cells they guard are
  never written without one but by erasure, which stamps its deletes after them: see
  _delete_after_writes): the image row (INSERT IF NOT EXISTS: of concurrent ingests of the
  same bytes one stores it and appends IMAGE_INGESTED; the others wrote identical dependent
  rows, the ids derive from the bytes); model version numbers (claimed in version_numbers
  before the artifact is written); the active-version cell in meta (compare-and-set: the one
  transition an activation or withdrawal makes; a version row's ACTIVE/RETIRED state is a
  hint read through that cell, so no two versions ever read as ACTIVE); a face's BELONGS
  cell in face_belongs (the one BELONGS label that stands is the one it names, so two never
  both stand: see "labels" in CassandraStore).
- Event log: partitions of one minute (events_by_minute), clustered by timeuuid;
  cursor = hex timestamp + timeuuid, so cursors order as strings too. Writers in
  different processes can land out of order, so read_events re-reads a short lag
  window before the cursor and returns events there it had not delivered. An append
  acknowledged later than half the window is appended again with a fresh id (readers
  may have read past the first id before it landed: nothing acknowledged is lost), and
  every such copy carries the first copy's id as its `origin`. Readers deliver an event
  once per origin: read_events remembers, per cursor it handed out, which origins its
  reader line delivered (in the lag window, and for copies back COPY_HORIZON_S), so a
  reader that got the first copy skips the later ones and one that missed it gets the
  next. Exactly once for cursors this store instance handed out; a cursor it does not
  know (another process, a restart, one evicted from REMEMBERED_CURSORS) gets the lag
  window again, and copies of events before it: at-least-once. (Why copies and not
  one id: a write's visibility and its acknowledgement are not ordered, so the writer
  cannot tell whether a reader saw a late first copy; only the reader can, by origin.)
  Clocks of writers must be in sync (same host or NTP).
"""
from __future__ import annotations

import collections
import hashlib
import itertools
import json
import logging
import re
import socket
import ssl
import threading
import time
import uuid
import zlib
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
from cassandra import (
    AuthenticationFailed,
    ReadTimeout,
    WriteTimeout,
    ConsistencyLevel,
    OperationTimedOut,
    ProtocolVersion,
    RequestExecutionException,
    Unauthorized,
)
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, NoHostAvailable, Session
from cassandra.connection import ConnectionBusy, ConnectionException
from cassandra.protocol import IsBootstrappingErrorMessage, OverloadedErrorMessage, ServerError
from cassandra.metadata import Murmur3Token
from cassandra.policies import DCAwareRoundRobinPolicy, RetryPolicy, RoundRobinPolicy, TokenAwarePolicy
from cassandra.query import BatchStatement, BatchType, PreparedStatement, Statement
from cassandra.util import min_uuid_from_time, unix_time_from_uuid1, uuid_from_time

from visage.config import CassandraConfig
from visage.metrics import STORE_OVERLOADED_RETRIES
from visage.store import portable_cql
from visage.store.base import (
    ACTIVE_VERSION_KEY,
    WITHDRAWN_REASON,
    NotFound,
    Store,
    StoreConflict,
    StoreCorrupt,
    StoreError,
    StoreUnavailable,
    Withdrawn,
    changed_rows,
    stored_verdicts,
    check_prediction_columns,
    event_attributes,
    is_unknown,
    translate_errors,
)
from visage.store.records import (
    EventRecord,
    FaceRecord,
    ImageRecord,
    LabelRecord,
    ModelVersionRecord,
    PersonaRecord,
    PredictionRecord,
    ShardRecord,
    TrainingJobRecord,
    UnknownFaceKey,
    embedding_from_bytes,
    embedding_to_bytes,
    now,
)
from visage.v1 import resources_pb2 as pb

log = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024   # keeps every row well under Cassandra's/Cosmos' 2 MB
ID_CHUNK = 100              # ids per `IN (...)` read
CONCURRENCY = 64            # requests in flight for one bulk read or write (more only queues up)
BATCH_ROWS = 64             # rows per unlogged batch of one partition (stays under the 5 KB batch warning)
PREDICTION_BUCKETS = 128    # face_predictions partitions (50M faces: ~30 MB each); part of the schema: never change
UNKNOWN_BUCKETS = 16        # unknown_faces partitions (1M unknown faces: ~6 MB each); part of the schema: never change
UNKNOWN_SLACK = 8           # extra index rows read per page, for rows a racing or crashed writer left stale
UNKNOWN_GRACE_S = 3600      # gc_grace_seconds of unknown_faces: readers check its rows, so a resurrected one is harmless
DAY_S = 86400
EVENT_BUCKET_S = 60         # one events partition per minute
EVENT_LAG_S = 2.0           # re-read window before a cursor (see module doc)
EVENT_APPEND_ATTEMPTS = 3   # copies of one event at most (each after a late acknowledgement)
REQUEST_TIMEOUT_S = 30      # the driver's limit for one request: no write is acknowledged later
BUSY_BACKOFF_S = 0.01       # first wait before sending a request the busy connection refused again
OVERLOAD_BACKOFF_S = 0.05   # first wait before sending a request the node refused as overloaded again
OVERLOAD_BACKOFF_MAX_S = 5.0
CONNECT_ATTEMPTS = 3        # a node still starting, or a connect slower than its timeout, is tried again
CONNECT_BACKOFF_S = 1.0     # before the second attempt; doubled before each later one
# A copy is stamped at most this long after its origin: readers remember origins that long.
COPY_HORIZON_S = EVENT_APPEND_ATTEMPTS * REQUEST_TIMEOUT_S + EVENT_LAG_S
FORGET_CLOCK_MARGIN_S = 300  # an erasure's scan starts this long before the oldest thing erased was created
REMEMBERED_CURSORS = 50_000
COUNT_RANGES = 256          # token ranges count_faces counts separately (~4k faces each at 1M)
LWT_ATTEMPTS = 50           # a conditional write that keeps losing races raises StoreConflict
# Timeouts after which a conditional write (or a serial read finishing one) may or may not have applied.
_OUTCOME_UNKNOWN = (WriteTimeout, ReadTimeout, OperationTimedOut)
SCHEMA_COMPONENT = "visage"

# Append-only list of migrations; index + 1 is the schema version. `{ks}` is the keyspace.
# IF NOT EXISTS on DDL only (never on data writes) so racing migrators are harmless.
# A step is CQL or, to move data, a function of the store; every step may run again after a crash.
MIGRATIONS: list[list[str | Callable[["CassandraStore"], None]]] = [[
    """CREATE TABLE IF NOT EXISTS {ks}.personas (persona_id text PRIMARY KEY, display_name text,
        create_time double, update_time double)""",
    """CREATE TABLE IF NOT EXISTS {ks}.images (image_id text PRIMARY KEY, filename text, content_type text,
        width int, height int, size_bytes bigint, face_count int, status int, create_time double,
        chunk_count int)""",
    """CREATE TABLE IF NOT EXISTS {ks}.image_chunks (image_id text, chunk int, data blob,
        PRIMARY KEY ((image_id), chunk))""",
    """CREATE TABLE IF NOT EXISTS {ks}.images_by_day (day int, create_time double, image_id text,
        PRIMARY KEY ((day), create_time, image_id)) WITH CLUSTERING ORDER BY (create_time DESC, image_id ASC)""",
    """CREATE TABLE IF NOT EXISTS {ks}.days (kind text, day int, PRIMARY KEY ((kind), day))
        WITH CLUSTERING ORDER BY (day DESC)""",
    """CREATE TABLE IF NOT EXISTS {ks}.faces (face_id text PRIMARY KEY, image_id text, idx int, box text,
        landmarks text, embedding blob, create_time double)""",
    """CREATE TABLE IF NOT EXISTS {ks}.face_crops (face_id text PRIMARY KEY, crop blob)""",
    """CREATE TABLE IF NOT EXISTS {ks}.faces_by_image (image_id text, idx int, face_id text,
        PRIMARY KEY ((image_id), idx))""",
    """CREATE TABLE IF NOT EXISTS {ks}.labels (face_id text, persona_id text, verdict int, labelled_by text,
        create_time double, PRIMARY KEY ((face_id), persona_id))""",
    """CREATE TABLE IF NOT EXISTS {ks}.labels_by_persona (persona_id text, verdict int, face_id text,
        PRIMARY KEY ((persona_id), verdict, face_id))""",
    """CREATE TABLE IF NOT EXISTS {ks}.predictions (face_id text PRIMARY KEY, persona_id text,
        confidence double, model_version int, create_time double)""",
    """CREATE TABLE IF NOT EXISTS {ks}.predictions_by_persona (persona_id text, model_version int,
        face_id text, PRIMARY KEY ((persona_id, model_version), face_id))""",
    """CREATE TABLE IF NOT EXISTS {ks}.prediction_versions (persona_id text, model_version int,
        PRIMARY KEY ((persona_id), model_version))""",
    """CREATE TABLE IF NOT EXISTS {ks}.model_versions (version int PRIMARY KEY, state int, algorithm text,
        unknown_threshold double, persona_ids text, metrics text, lineage text, gate_reason text,
        create_time double, activate_time double, chunk_count int)""",
    """CREATE TABLE IF NOT EXISTS {ks}.model_artifact_chunks (version int, chunk int, data blob,
        PRIMARY KEY ((version), chunk))""",
    """CREATE TABLE IF NOT EXISTS {ks}.training_jobs (job_id text PRIMARY KEY, body text, create_time double)""",
    """CREATE TABLE IF NOT EXISTS {ks}.jobs_by_day (day int, create_time double, job_id text,
        PRIMARY KEY ((day), create_time, job_id)) WITH CLUSTERING ORDER BY (create_time DESC, job_id ASC)""",
    """CREATE TABLE IF NOT EXISTS {ks}.events_by_minute (bucket bigint, id timeuuid, type int, subject text,
        attributes map<text, text>, PRIMARY KEY ((bucket), id)) WITH CLUSTERING ORDER BY (id ASC)""",
    """CREATE TABLE IF NOT EXISTS {ks}.event_buckets (shard int, bucket bigint, PRIMARY KEY ((shard), bucket))
        WITH CLUSTERING ORDER BY (bucket ASC)""",
    """CREATE TABLE IF NOT EXISTS {ks}.meta (key text PRIMARY KEY, value text)""",
], [
    # Predictions move from one partition per face to PREDICTION_BUCKETS partitions, so
    # bulk writes can batch rows of one partition (see the module doc).
    """CREATE TABLE IF NOT EXISTS {ks}.face_predictions (bucket int, face_id text, persona_id text,
        confidence double, model_version int, create_time double, PRIMARY KEY ((bucket), face_id))""",
    lambda store: store._move_predictions_to_buckets(),
    """DROP TABLE IF EXISTS {ks}.predictions""",
], [
    # Events carry ids only: the display names PERSONA_RENAMED used to carry go.
    lambda store: store._scrub_rename_events(),
], [
    # Faces and personas a user hid: few rows, one partition per kind.
    """CREATE TABLE IF NOT EXISTS {ks}.hidden (kind text, item_id text, PRIMARY KEY ((kind), item_id))""",
], [
    # Conditional writes (see the module doc): version numbers are claimed with an LWT, and a
    # face's one BELONGS persona is a static column of its labels partition, so a label and
    # the BELONGS label it replaces change in one conditional batch.
    """CREATE TABLE IF NOT EXISTS {ks}.version_numbers (version int PRIMARY KEY, claimed_at double)""",
    """CREATE TABLE IF NOT EXISTS {ks}.work_shards (job text, shard int, owner text, lease_until double,
        faces int, done boolean, PRIMARY KEY ((job), shard))""",
    lambda store: store._add_column("labels", "belongs", "text static"),
    lambda store: store._fill_belongs(),
], [
    # The last verdict stands (changed-only re-classification): predictions are indexed by
    # persona alone (the verdicts of versions no longer active, which had no say before, go),
    # and unknown faces get an index of their own (see "Unknown faces" in the module doc).
    """CREATE TABLE IF NOT EXISTS {ks}.persona_predictions (persona_id text, face_id text,
        PRIMARY KEY ((persona_id), face_id))""",
    """CREATE TABLE IF NOT EXISTS {ks}.unknown_faces (bucket int, image_time double, image_id text, idx int,
        face_id text, PRIMARY KEY ((bucket), image_time, image_id, idx))
        WITH CLUSTERING ORDER BY (image_time DESC, image_id ASC, idx ASC)""",
    lambda store: store._shorten_grace("unknown_faces"),
    lambda store: store._move_to_last_verdict(),
    """DROP TABLE IF EXISTS {ks}.predictions_by_persona""",
    """DROP TABLE IF EXISTS {ks}.prediction_versions""",
], [
    # Exact event appends: a copy of a late-acknowledged event names its first copy (see the module doc).
    lambda store: store._add_column("events_by_minute", "origin", "timeuuid"),
], [
    # Portable conditional writes (see "labels" in CassandraStore): a face's BELONGS persona moves
    # from a static column of its labels partition to a table of its own.
    """CREATE TABLE IF NOT EXISTS {ks}.face_belongs (face_id text PRIMARY KEY, persona_id text)""",
    lambda store: store._move_belongs_cells(),
], [
    # An image row names the put_image call that committed it, so a commit whose outcome was
    # unknown (CassandraStore._cas) is settled as this call's or a racing ingest's.
    lambda store: store._add_column("images", "committed_by", "text"),
], [
    # Faces a person drew (IngestService.AddFace) say who (null: found by the detector).
    lambda store: store._add_column("faces", "drawn_by", "text"),
], [
    # Erased means unreadable in the data files (issue 25): see CassandraStore._tune_for_erasure.
    lambda store: store._tune_for_erasure(),
]]

# A new keyspace gets the schema MIGRATIONS end with in one step (schema version len(MIGRATIONS)):
# the steps' peak of 26 tables is over the 25 a Cosmos DB keyspace with shared throughput holds,
# and no data needs moving. tests/store/test_portable_cql.py checks both paths end alike.
BASELINE: list[str | Callable[["CassandraStore"], None]] = [
    """CREATE TABLE IF NOT EXISTS {ks}.personas (persona_id text PRIMARY KEY, display_name text,
        create_time double, update_time double)""",
    """CREATE TABLE IF NOT EXISTS {ks}.images (image_id text PRIMARY KEY, filename text, content_type text,
        width int, height int, size_bytes bigint, face_count int, status int, create_time double,
        chunk_count int, committed_by text)""",
    """CREATE TABLE IF NOT EXISTS {ks}.image_chunks (image_id text, chunk int, data blob,
        PRIMARY KEY ((image_id), chunk))""",
    """CREATE TABLE IF NOT EXISTS {ks}.images_by_day (day int, create_time double, image_id text,
        PRIMARY KEY ((day), create_time, image_id)) WITH CLUSTERING ORDER BY (create_time DESC, image_id ASC)""",
    """CREATE TABLE IF NOT EXISTS {ks}.days (kind text, day int, PRIMARY KEY ((kind), day))
        WITH CLUSTERING ORDER BY (day DESC)""",
    """CREATE TABLE IF NOT EXISTS {ks}.faces (face_id text PRIMARY KEY, image_id text, idx int, box text,
        landmarks text, embedding blob, create_time double, drawn_by text)""",
    """CREATE TABLE IF NOT EXISTS {ks}.face_crops (face_id text PRIMARY KEY, crop blob)""",
    """CREATE TABLE IF NOT EXISTS {ks}.faces_by_image (image_id text, idx int, face_id text,
        PRIMARY KEY ((image_id), idx))""",
    """CREATE TABLE IF NOT EXISTS {ks}.labels (face_id text, persona_id text, verdict int, labelled_by text,
        create_time double, PRIMARY KEY ((face_id), persona_id))""",
    """CREATE TABLE IF NOT EXISTS {ks}.face_belongs (face_id text PRIMARY KEY, persona_id text)""",
    """CREATE TABLE IF NOT EXISTS {ks}.labels_by_persona (persona_id text, verdict int, face_id text,
        PRIMARY KEY ((persona_id), verdict, face_id))""",
    """CREATE TABLE IF NOT EXISTS {ks}.face_predictions (bucket int, face_id text, persona_id text,
        confidence double, model_version int, create_time double, PRIMARY KEY ((bucket), face_id))""",
    """CREATE TABLE IF NOT EXISTS {ks}.persona_predictions (persona_id text, face_id text,
        PRIMARY KEY ((persona_id), face_id))""",
    """CREATE TABLE IF NOT EXISTS {ks}.unknown_faces (bucket int, image_time double, image_id text, idx int,
        face_id text, PRIMARY KEY ((bucket), image_time, image_id, idx))
        WITH CLUSTERING ORDER BY (image_time DESC, image_id ASC, idx ASC)""",
    lambda store: store._shorten_grace("unknown_faces"),
    """CREATE TABLE IF NOT EXISTS {ks}.hidden (kind text, item_id text, PRIMARY KEY ((kind), item_id))""",
    """CREATE TABLE IF NOT EXISTS {ks}.model_versions (version int PRIMARY KEY, state int, algorithm text,
        unknown_threshold double, persona_ids text, metrics text, lineage text, gate_reason text,
        create_time double, activate_time double, chunk_count int)""",
    """CREATE TABLE IF NOT EXISTS {ks}.model_artifact_chunks (version int, chunk int, data blob,
        PRIMARY KEY ((version), chunk))""",
    """CREATE TABLE IF NOT EXISTS {ks}.version_numbers (version int PRIMARY KEY, claimed_at double)""",
    """CREATE TABLE IF NOT EXISTS {ks}.training_jobs (job_id text PRIMARY KEY, body text, create_time double)""",
    """CREATE TABLE IF NOT EXISTS {ks}.jobs_by_day (day int, create_time double, job_id text,
        PRIMARY KEY ((day), create_time, job_id)) WITH CLUSTERING ORDER BY (create_time DESC, job_id ASC)""",
    """CREATE TABLE IF NOT EXISTS {ks}.work_shards (job text, shard int, owner text, lease_until double,
        faces int, done boolean, PRIMARY KEY ((job), shard))""",
    """CREATE TABLE IF NOT EXISTS {ks}.events_by_minute (bucket bigint, id timeuuid, type int, subject text,
        attributes map<text, text>, origin timeuuid, PRIMARY KEY ((bucket), id)) WITH CLUSTERING ORDER BY (id ASC)""",
    """CREATE TABLE IF NOT EXISTS {ks}.event_buckets (shard int, bucket bigint, PRIMARY KEY ((shard), bucket))
        WITH CLUSTERING ORDER BY (bucket ASC)""",
    """CREATE TABLE IF NOT EXISTS {ks}.meta (key text PRIMARY KEY, value text)""",
    lambda store: store._tune_for_erasure(),
]

# The tables that hold what an erasure must make unreadable: persona names, file names, photos,
# embeddings (with boxes and landmarks), crops, and model artifacts (computed from embeddings).
ERASABLE_CONTENT_TABLES = ("personas", "images", "image_chunks", "faces", "face_crops", "model_artifact_chunks")

IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")


# ---- helpers ----------------------------------------------------------------
def _chunks(data: bytes) -> list[bytes]:
    return [data[i:i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)] or [b""]


def _groups(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _persona_key(persona_id: str) -> str:
    """Partition-key form of a prediction's persona: "" (unknown) may not be a key; ids are hex."""
    return persona_id or "-"


def _unknown_bucket(image_id: str) -> int:
    """Partition of a face's unknown_faces row: by its image, so an image's faces stay together."""
    return zlib.crc32(image_id.encode()) % UNKNOWN_BUCKETS


def _prediction_bucket(face_id: str) -> int:
    """Partition of a face's prediction: a stable hash (Python's hash() is salted per process)."""
    return zlib.crc32(face_id.encode()) % PREDICTION_BUCKETS


def _by_partition(rows: Iterable[tuple], key: Callable[[tuple], object]) -> dict[object, list[tuple]]:
    groups: dict[object, list[tuple]] = defaultdict(list)
    for row in rows:
        groups[key(row)].append(row)
    return groups


def _embedding_batches(rows: Iterable, batch_size: int) -> Iterator[tuple[list[str], np.ndarray]]:
    """(face_ids, matrix) batches of (face_id, embedding) rows."""
    ids: list[str] = []
    blobs: list[bytes] = []
    for row in rows:
        ids.append(row.face_id)
        blobs.append(row.embedding)
        if len(ids) == batch_size:
            yield ids, np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(ids), -1)
            ids, blobs = [], []
    if ids:
        yield ids, np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(ids), -1)


MIN_TOKEN = -2 ** 63  # Murmur3Partitioner's token range


def _token_bounds(shard: int, shards: int) -> tuple[int, int | None]:
    """Shard `shard` of `shards`: tokens in [low, high) (high None: to the ring's end)."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is not one of {shards}")
    low = MIN_TOKEN + shard * 2 ** 64 // shards
    return low, (None if shard == shards - 1 else MIN_TOKEN + (shard + 1) * 2 ** 64 // shards)


def _is_label(row) -> bool:
    """A labels partition that holds only its static `belongs` cell reads as one row without a label."""
    return row.persona_id is not None


def _day(timestamp: float) -> int:
    return int(timestamp // DAY_S)


def _event_key(event_id: uuid.UUID) -> str:
    """Cursor string: ordered by time, then by the id (the same order as sorting keys)."""
    return f"{event_id.time:016x}-{event_id.hex}"


def _event_id(cursor: str) -> uuid.UUID:
    try:
        return uuid.UUID(hex=cursor.split("-", 1)[1].split("~", 1)[0])  # ~n: a variant (_remember_cursor)
    except (IndexError, ValueError) as e:
        raise ValueError(f"malformed event cursor {cursor!r}") from e


def _bucket(event_id: uuid.UUID) -> int:
    return int(unix_time_from_uuid1(event_id) // EVENT_BUCKET_S)


class _Batch:
    """One read_events answer: the origins its reader line had delivered in the lag window
    before it (`base`), its events' ids and origins in order, and the line's cursor it was
    read after (`earlier`; None at the line's start or beyond COPY_HORIZON_S)."""

    def __init__(self, base: frozenset[uuid.UUID], ids: list[uuid.UUID], origins: list[uuid.UUID],
                 earlier: "_Delivered | None"):
        self.base, self.ids, self.origins, self.earlier = base, ids, origins, earlier
        self.positions = {origin: i for i, origin in enumerate(origins)}
        self.newest = max((unix_time_from_uuid1(i) for i in ids), default=0.0)


class _Delivered:
    """Origins a reader line delivered up to one cursor: its batch's `base`, the batch's
    events up to the cursor's position, and (for copies, `ever`) the line's earlier batches."""
    NOTHING: "_Delivered"

    def __init__(self, batch: _Batch, upto: int):
        self.batch, self.upto = batch, upto

    def has(self, origin: uuid.UUID) -> bool:
        """Delivered in the lag window before the cursor (enough for a first copy, which
        the window holds)."""
        return origin in self.batch.base or self.batch.positions.get(origin, self.upto + 1) <= self.upto

    def ever(self, origin: uuid.UUID) -> bool:
        """Delivered by this line at all, back COPY_HORIZON_S (a copy's origin may lie before the window)."""
        node: _Delivered | None = self
        while node is not None:
            if node.has(origin):
                return True
            node = node.batch.earlier
        return False

    def window(self, at: uuid.UUID) -> frozenset[uuid.UUID]:
        """The origins delivered in the lag window before the cursor at event `at`: what a read
        from that cursor consults (two readers that agree on it may share the cursor)."""
        since = at.time - int(EVENT_LAG_S * 1e7)  # uuid1 time: 100 ns ticks
        got = {origin for origin in self.batch.base if origin.time >= since}
        for i in range(self.upto, -1, -1):  # the batch is in log order: its window is a tail
            if self.batch.ids[i].time < since:
                break
            got.add(self.batch.origins[i])
        return frozenset(got)

    def prune(self, oldest: float) -> None:
        """Cuts the line before its first batch whose newest event is older than `oldest`."""
        node = self
        while (earlier := node.batch.earlier) is not None:
            if earlier.batch.newest < oldest:
                node.batch.earlier = None
                return
            node = earlier


_Delivered.NOTHING = _Delivered(_Batch(frozenset(), [], [], None), -1)


def consistency_level(name: str) -> int:
    """The driver's level of a setting's name (e.g. LOCAL_QUORUM); ValueError names the valid ones."""
    level = ConsistencyLevel.name_to_value.get(name.upper())
    if level is None:
        raise ValueError(f"unknown Cassandra consistency level {name!r} "
                         f"(one of {', '.join(sorted(ConsistencyLevel.name_to_value))})")
    return level


class _OverloadRethrows(RetryPolicy):
    """The driver's default policy, except that an Overloaded answer (Cosmos DB's 429) reaches
    the store at once instead of being tried on the next host without a pause: the store waits
    (honouring the hint the error carries) before sending it again (_Overload)."""

    def on_request_error(self, query, consistency, error, retry_num):
        if isinstance(error, OverloadedErrorMessage):
            return self.RETHROW, None
        return super().on_request_error(query, consistency, error, retry_num)


def connect(config: CassandraConfig) -> tuple[Cluster, Session]:
    """A driver session for this config: TLS / auth / DC options for Cosmos DB
    (port 10350, TLS, username = account name) and Managed Instance.

    - Token-aware routing: prepared statements and single-partition batches go
      straight to a replica of their partition.
    - Consistency from the config (default LOCAL_QUORUM for reads and writes, LOCAL_SERIAL
      for conditional writes): a read after an acknowledged write sees it on any replica
      count (W + R > RF), which the commit-point order relies on.
    - TCP_NODELAY: without it a request bigger than one TCP segment (a crop, an
      image chunk, a batch) waits ~40 ms for a delayed ACK (Nagle) on every write.
    - Protocol v4: the one every Cassandra Visage runs on speaks (Apache Cassandra 3-5,
      Managed Instance, Cosmos DB); named, so the driver does not try others first."""
    policy = (TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=config.local_dc)) if config.local_dc
              else TokenAwarePolicy(RoundRobinPolicy()))
    profile = ExecutionProfile(load_balancing_policy=policy, consistency_level=consistency_level(config.consistency),
                               serial_consistency_level=consistency_level(config.serial_consistency),
                               retry_policy=_OverloadRethrows(), request_timeout=REQUEST_TIMEOUT_S)
    options: dict = {}
    if config.username:
        options["auth_provider"] = PlainTextAuthProvider(config.username, config.password)
    if config.tls:
        context = ssl.create_default_context(cafile=config.tls_ca_file or None)
        options["ssl_context"] = context
        options["ssl_options"] = {"server_hostname": config.contact_points[0]}

    def open_session() -> tuple[Cluster, Session]:
        cluster = Cluster(list(config.contact_points), port=config.port, protocol_version=ProtocolVersion.V4,
                          execution_profiles={EXEC_PROFILE_DEFAULT: profile},
                          connect_timeout=config.connect_timeout_seconds,
                          control_connection_timeout=config.connect_timeout_seconds,
                          sockopts=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)], **options)
        try:
            return cluster, cluster.connect()
        except BaseException:
            cluster.shutdown()
            raise

    where = f"{','.join(config.contact_points)}:{config.port}"
    for attempt in itertools.count(1):
        try:
            return open_session()
        except Exception as e:
            if attempt == CONNECT_ATTEMPTS or not _not_ready(e):
                raise StoreUnavailable(f"cannot connect to Cassandra at {where}: {e}") from e
            backoff = CONNECT_BACKOFF_S * 2 ** (attempt - 1)
            log.warning("Cassandra at %s not ready (%s); retrying in %.0f s", where, e, backoff)
            time.sleep(backoff)


def _not_ready(error: Exception) -> bool:
    """Whether a failed connect may succeed when tried again: the node is not up yet, or
    did not answer in time (not: refused credentials, a protocol nobody speaks, a bug)."""
    if isinstance(error, OperationTimedOut):
        return True
    return (isinstance(error, NoHostAvailable) and not _protocol_refused(error)
            and not any(isinstance(e, (AuthenticationFailed, Unauthorized)) for e in error.errors.values()))


class _BusyWait:
    """Requests the driver did not send because every host's connection was busy (its socket
    buffer full: the node reads slower than we write, e.g. megabyte chunks on a loaded
    machine) are sent again after a short, growing wait, for up to REQUEST_TIMEOUT_S without
    progress. They never left, so sending them again is safe even for a compare-and-set."""

    def __init__(self) -> None:
        self._backoff, self._stalled_since = BUSY_BACKOFF_S, None

    def progressed(self) -> None:
        self._backoff, self._stalled_since = BUSY_BACKOFF_S, None

    def wait_or_raise(self, error: NoHostAvailable) -> None:
        busy = bool(error.errors) and all(isinstance(e, ConnectionBusy) for e in error.errors.values())
        self._stalled_since = self._stalled_since or time.monotonic()
        if not busy or time.monotonic() - self._stalled_since > REQUEST_TIMEOUT_S:
            raise error
        time.sleep(self._backoff)
        self._backoff = min(2 * self._backoff, 0.5)


class _Overload:
    """Requests the node answered Overloaded (Cosmos DB's 429 "request rate is large", or a
    Cassandra coordinator shedding load) were not executed, so they are sent again, compare-
    and-sets included: after Cosmos' RetryAfterMs hint when the error carries one, else after a
    growing wait; at most `retries` times a request, then the error stands (StoreUnavailable)."""

    HINT = re.compile(r"RetryAfterMs=(\d+)", re.IGNORECASE)

    def __init__(self, retries: int) -> None:
        self.retries, self.attempts = retries, collections.Counter()

    def wait_or_raise(self, key: int, error: OverloadedErrorMessage) -> None:
        self.attempts[key] += 1
        if self.attempts[key] > self.retries:
            raise error
        hint = self.HINT.search(str(error))
        backoff = (int(hint.group(1)) / 1000 if hint
                   else min(OVERLOAD_BACKOFF_S * 2 ** (self.attempts[key] - 1), OVERLOAD_BACKOFF_MAX_S))
        STORE_OVERLOADED_RETRIES.inc()
        log.info("Cassandra overloaded (%s); sending again in %.2f s", error.summary, backoff)
        time.sleep(backoff)


def _protocol_refused(error: NoHostAvailable) -> bool:
    """Whether every host refused the protocol version (not: unreachable, bad credentials)."""
    return bool(error.errors) and all("protocol" in str(e).lower() for e in error.errors.values())


def _store_error(error: Exception) -> StoreError | None:
    """The driver's errors as the store's own (see translate_errors): no replica reachable,
    a timeout, an overloaded or failing coordinator, refused credentials are all outages
    worth a retry; a malformed statement (InvalidRequest, ...) is a bug and stays as it is."""
    outage = (NoHostAvailable, OperationTimedOut, ConnectionException, RequestExecutionException,
              Unauthorized, AuthenticationFailed, ServerError, OverloadedErrorMessage, IsBootstrappingErrorMessage)
    if isinstance(error, outage):
        return StoreUnavailable(f"Cassandra: {type(error).__name__}: {error}")
    return None


@translate_errors(_store_error)
class CassandraStore(Store):
    def __init__(self, config: CassandraConfig):
        if not IDENTIFIER.match(config.keyspace):
            raise ValueError(f"invalid keyspace name {config.keyspace!r} (letters, digits, _; at most 48)")
        if config.backend not in portable_cql.BACKENDS or config.erased_grace_seconds < 0:
            raise ValueError(f"VISAGE_CASSANDRA_BACKEND must be one of {', '.join(portable_cql.BACKENDS)} "
                             f"(got {config.backend!r}) and VISAGE_CASSANDRA_ERASED_GRACE_SECONDS >= 0 "
                             f"(got {config.erased_grace_seconds})")
        self.config = config
        self.keyspace = config.keyspace
        self._cluster, self._session = connect(config)
        self._prepared: dict[str, PreparedStatement] = {}
        self._lock = threading.Lock()
        self._known_buckets: set[int] = set()
        # cursor handed out -> the ids in its lag window delivered up to and including it
        self._delivered_at: OrderedDict[str, _Delivered] = OrderedDict()
        self._variants = itertools.count(1)
        self._sighted: OrderedDict[uuid.UUID, float] = OrderedDict()  # event id -> first seen (wall time)
        self._late: set[uuid.UUID] = set()  # first copies first seen long after their stamp
        self.clock: Callable[[], float] = time.time  # stamps events (tests inject a slow acknowledgement)
        self._serial = consistency_level(config.serial_consistency)

    # ---- plumbing --------------------------------------------------------
    def _stmt(self, cql: str) -> PreparedStatement:
        stmt = self._prepared.get(cql)
        if stmt is None:
            busy = _BusyWait()
            while stmt is None:
                try:
                    stmt = self._session.prepare(cql.format(ks=self.keyspace))
                except NoHostAvailable as error:
                    busy.wait_or_raise(error)
            self._prepared[cql] = stmt
        return stmt

    def _run(self, cql: str, args: tuple = (), fetch_size: int | None = None, timeout: float = REQUEST_TIMEOUT_S,
             serial: bool = False):
        """`serial`: a linearizable read, which sees every applied compare-and-set."""
        bound = self._stmt(cql).bind(args)
        if fetch_size:
            bound.fetch_size = fetch_size
        if serial:
            bound.consistency_level = self._serial
        return self._execute_each([bound], timeout)[0]

    def _cas(self, cql: str, args: tuple, read: str, key: tuple, ours: Callable[[object], bool]) -> bool:
        """A conditional write (LWT): whether it applied. Its outcome is unknown when it timed
        out after replicas may have accepted its proposal (a WriteTimeout at the CAS or commit
        stage, or no answer in time: with several replicas, racing writers or a slow node); a
        serial read of its row then settles it (it finishes any round in progress), and
        `ours(row)` says whether the row holds what this write made. If it does not, the write
        is sent again: after the serial read no round of it is in progress, so the answer
        that comes back is the outcome."""
        for _attempt in range(LWT_ATTEMPTS):
            try:
                return self._run(cql, args).was_applied
            except _OUTCOME_UNKNOWN as error:
                log.info("conditional write's outcome unknown (%s); settling it with a serial read", error)
            row = self._serial_read(read, key)
            if row is not None and ours(row):
                return True
        raise StoreConflict(f"a conditional write's outcome stayed unknown in {LWT_ATTEMPTS} attempts; retry")

    def _serial_read(self, cql: str, args: tuple):
        """The one row of a linearizable read (None: none). Such a read finishes any round of a
        conditional write in progress on the row, so it may time out like one (a WriteTimeout
        of type CAS under contention); it is read again, LWT_ATTEMPTS times."""
        for _attempt in range(LWT_ATTEMPTS):
            try:
                return self._run(cql, args, serial=True).one()
            except _OUTCOME_UNKNOWN as error:
                log.info("serial read timed out (%s); reading again", error)
        raise StoreConflict(f"a serial read kept timing out in {LWT_ATTEMPTS} attempts; retry")

    def _run_many(self, cql: str, rows: list[tuple]) -> list:
        """Executes one prepared statement for many argument tuples, CONCURRENCY at a time."""
        stmt = self._stmt(cql)
        return self._execute_each([stmt.bind(row) for row in rows])

    def _select_in(self, cql: str, ids: list[str]) -> list:
        """Rows of `cql` (with `IN ?`) for many ids, ID_CHUNK per request."""
        rows = []
        for result in self._run_many(cql, [(group,) for group in _groups(list(dict.fromkeys(ids)), ID_CHUNK)]):
            rows.extend(result)
        return rows

    def _execute_all(self, statements: Iterable[Statement]) -> None:
        """Runs bound statements and batches, CONCURRENCY in flight; raises the first error."""
        self._execute_each(list(statements))

    def _execute_each(self, statements: list[Statement], timeout: float = REQUEST_TIMEOUT_S) -> list:
        """The statements' results in order, CONCURRENCY in flight; raises the first error (a
        busy connection's refusal is no error: see _BusyWait)."""
        results: list = [None] * len(statements)
        waiting = collections.deque(range(len(statements)))
        in_flight: collections.deque = collections.deque()
        busy, overload = _BusyWait(), _Overload(self.config.overload_retries)
        while waiting or in_flight:
            while waiting and len(in_flight) < CONCURRENCY:
                i = waiting.popleft()
                in_flight.append((i, self._session.execute_async(statements[i], timeout=timeout)))
            i, future = in_flight.popleft()
            try:
                results[i] = future.result()
                busy.progressed()
            except NoHostAvailable as error:
                busy.wait_or_raise(error)
                waiting.append(i)
            except OverloadedErrorMessage as error:
                overload.wait_or_raise(i, error)
                waiting.append(i)
        return results

    def _batches(self, cql: str, rows: Iterable[tuple], partition: Callable[[tuple], object]) -> Iterator[Statement]:
        """`cql` for every row, as unlogged batches of rows that share a partition (`partition(row)`)."""
        stmt = self._stmt(cql)
        for group in _by_partition(rows, partition).values():
            for chunk in _groups(group, BATCH_ROWS):
                batch = BatchStatement(BatchType.UNLOGGED)
                for row in chunk:
                    batch.add(stmt, row)
                yield batch

    def _bound(self, cql: str, rows: Iterable[tuple]) -> Iterator[Statement]:
        stmt = self._stmt(cql)
        return (stmt.bind(row) for row in rows)

    def migrate(self, target: int | None = None) -> None:
        """Applies the migrations not applied yet (up to schema version `target`; tests
        use it to build an older schema). A new keyspace gets BASELINE in one step."""
        self._session.execute(f"CREATE KEYSPACE IF NOT EXISTS {self.keyspace} "
                              f"WITH replication = {self.config.replication}")
        self._session.execute(f"CREATE TABLE IF NOT EXISTS {self.keyspace}.schema_version "
                              "(component text, version int, applied_at double, PRIMARY KEY ((component), version))")
        rows = self._run("SELECT version FROM {ks}.schema_version WHERE component = ?", (SCHEMA_COMPONENT,))
        current = max((row.version for row in rows), default=0)
        steps = list(enumerate(MIGRATIONS[current:target], start=current + 1))
        if current == 0 and target is None:
            steps = [(len(MIGRATIONS), BASELINE)]
        for version, statements in steps:
            for statement in statements:
                if callable(statement):
                    statement(self)
                else:
                    self._session.execute(statement.format(ks=self.keyspace), timeout=120)
            self._run("INSERT INTO {ks}.schema_version (component, version, applied_at) VALUES (?, ?, ?)",
                      (SCHEMA_COMPONENT, version, now()))
            log.info("cassandra keyspace %s migrated to schema version %d", self.keyspace, version)

    def schema_version(self) -> int:
        rows = self._run("SELECT version FROM {ks}.schema_version WHERE component = ?", (SCHEMA_COMPONENT,))
        return max((row.version for row in rows), default=0)

    def close(self) -> None:
        self._cluster.shutdown()

    # ---- personas --------------------------------------------------------
    def create_persona(self, display_name: str) -> PersonaRecord:
        record = PersonaRecord(uuid.uuid4().hex[:16], display_name)
        self._run("INSERT INTO {ks}.personas (persona_id, display_name, create_time, update_time) "
                  "VALUES (?, ?, ?, ?)",
                  (record.persona_id, record.display_name, record.create_time, record.update_time))
        self.append_event(pb.EVENT_TYPE_PERSONA_CREATED, record.persona_id)
        return record

    def get_persona(self, persona_id: str) -> PersonaRecord | None:
        rows = list(self._run("SELECT persona_id, display_name, create_time, update_time FROM {ks}.personas "
                              "WHERE persona_id = ?", (persona_id,)))
        return PersonaRecord(*rows[0]) if rows else None

    def list_personas(self) -> list[PersonaRecord]:
        rows = self._run("SELECT persona_id, display_name, create_time, update_time FROM {ks}.personas",
                         fetch_size=5000)
        return sorted((PersonaRecord(*row) for row in rows), key=lambda p: (p.display_name.lower(), p.persona_id))

    def rename_persona(self, persona_id: str, display_name: str) -> PersonaRecord:
        if self.get_persona(persona_id) is None:
            raise NotFound(f"persona {persona_id!r} not found")
        self._run("UPDATE {ks}.personas SET display_name = ?, update_time = ? WHERE persona_id = ?",
                  (display_name, now(), persona_id))
        self.append_event(pb.EVENT_TYPE_PERSONA_RENAMED, persona_id)  # ids only: no name in the log
        return self.get_persona(persona_id)

    def drop_persona_row(self, persona_id: str) -> None:
        self._run("DELETE FROM {ks}.personas WHERE persona_id = ?", (persona_id,))

    # ---- restore primitives (visage.store.archive) ------------------------------
    def restore_persona(self, persona: PersonaRecord) -> None:
        self._run("INSERT INTO {ks}.personas (persona_id, display_name, create_time, update_time) "
                  "VALUES (?, ?, ?, ?)",
                  (persona.persona_id, persona.display_name, persona.create_time, persona.update_time))

    def restore_image(self, image: ImageRecord, content: bytes, faces: list[FaceRecord]) -> None:
        chunks = _chunks(content)
        day = _day(image.create_time)
        self._remember_day("images", day)
        again = bool(list(self._run("SELECT image_id FROM {ks}.images WHERE image_id = ?", (image.image_id,))))
        # Its faces enter the unknown-faces index (the labels and verdicts restored after the
        # images take the known ones out; a restore run again re-decides them below).
        self._execute_all([
            *self._bound("INSERT INTO {ks}.image_chunks (image_id, chunk, data) VALUES (?, ?, ?)",
                         [(image.image_id, i, chunk) for i, chunk in enumerate(chunks)]),
            *self._face_writes(faces),
            *self._unknown_rows(UnknownFaceKey(image.create_time, image.image_id, f.index, f.face_id) for f in faces),
            self._stmt("INSERT INTO {ks}.images_by_day (day, create_time, image_id) VALUES (?, ?, ?)").bind(
                (day, image.create_time, image.image_id)),
        ])
        if again:
            self._sync_unknown([f.face_id for f in faces])
        # The commit point last (a plain upsert: a restore writes into a store nobody else writes).
        self._run("INSERT INTO {ks}.images (image_id, filename, content_type, width, height, size_bytes, "
                  "face_count, status, create_time, chunk_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (image.image_id, image.filename, image.content_type, image.width, image.height,
                   image.size_bytes, image.face_count, image.status, image.create_time, len(chunks)))

    def restore_hidden(self, kind: str, item_ids: Sequence[str]) -> None:
        self._run_many("INSERT INTO {ks}.hidden (kind, item_id) VALUES (?, ?)", [(kind, i) for i in item_ids])

    # ---- erasure primitives (the cascade: visage.store.domain) ----------------
    def existing_faces(self, face_ids: Iterable[str]) -> set[str]:
        return {row.face_id for row in self._select_in("SELECT face_id FROM {ks}.faces WHERE face_id IN ?",
                                                       list(face_ids))}

    def face_ids_of_images(self, image_ids: Sequence[str]) -> list[str]:
        return [row.face_id for row in self._select_in(
            "SELECT face_id FROM {ks}.faces_by_image WHERE image_id IN ?", list(image_ids))]

    def recount_faces(self, image_id: str, erased: Sequence[str]) -> None:
        if self.get_image(image_id) is None:  # an UPDATE of a missing row would create it
            return
        erased = set(erased)
        kept = [row.face_id for row in self._run("SELECT face_id FROM {ks}.faces_by_image WHERE image_id = ?",
                                                 (image_id,)) if row.face_id not in erased]
        self._run("UPDATE {ks}.images SET face_count = ? WHERE image_id = ?", (len(kept), image_id))
        if kept:
            self._run("UPDATE {ks}.images SET status = ? WHERE image_id = ?", (pb.IMAGE_STATUS_FACES_FOUND, image_id))

    def put_face(self, face: FaceRecord) -> None:
        image = self.get_image(face.image_id)
        if image is None:
            raise NotFound(f"image {face.image_id!r} not found")
        # Its unknown-faces row first (a face starts unknown) and its place in the image, which
        # erasure finds it by; then its rows, which make it visible (the commit point).
        self._execute_all([*self._unknown_rows([UnknownFaceKey(image.create_time, image.image_id, face.index,
                                                               face.face_id)]),
                           *self._placements([face])])
        self._execute_all(self._face_rows([face]))

    def drop_face_details(self, face_ids: Sequence[str]) -> None:
        placed = [(row.image_id, row.idx) for row in self._select_in(
            "SELECT image_id, idx FROM {ks}.faces WHERE face_id IN ?", list(face_ids))]
        self._execute_all([
            *self._bound("DELETE FROM {ks}.face_crops WHERE face_id = ?", [(face_id,) for face_id in face_ids]),
            *self._bound("DELETE FROM {ks}.faces_by_image WHERE image_id = ? AND idx = ?", placed),
        ])

    def drop_face_rows(self, face_ids: Sequence[str]) -> None:
        self._execute_all(self._bound("DELETE FROM {ks}.faces WHERE face_id = ?", [(f,) for f in face_ids]))

    def drop_image_content(self, image_ids: Sequence[str]) -> None:
        images = self._select_in("SELECT image_id, create_time FROM {ks}.images WHERE image_id IN ?", list(image_ids))
        self._execute_all([
            *self._bound("DELETE FROM {ks}.image_chunks WHERE image_id = ?", [(i,) for i in image_ids]),
            *self._bound("DELETE FROM {ks}.images_by_day WHERE day = ? AND create_time = ? AND image_id = ?",
                         [(_day(row.create_time), row.create_time, row.image_id) for row in images]),
            *self._bound("DELETE FROM {ks}.faces_by_image WHERE image_id = ?", [(i,) for i in image_ids]),
        ])

    def drop_image_rows(self, image_ids: Sequence[str]) -> None:
        self._delete_after_writes("images", "image_id", ("filename", "face_count"), list(image_ids))

    def _delete_after_writes(self, table: str, key: str, columns: Sequence[str], ids: list[str]) -> None:
        """Deletes these rows of a table that compare-and-sets write. Such a write carries its
        Paxos ballot's timestamp, which may run ahead of this client's clock, so a plain delete
        could land "before" it and leave the row standing; a conditional delete would order
        itself, but Cosmos DB refuses DELETE ... IF on tables made without its LWT flags. So
        the delete is stamped after the newest write of the row's `columns`."""
        written = ", ".join(f"WRITETIME({column})" for column in columns)
        rows = self._execute_each([self._stmt(f"SELECT {written} FROM {{ks}}.{table} WHERE {key} = ?").bind((i,))
                                   for i in ids])
        stamped = [(max(self._cluster.timestamp_generator(), *(w + 1 for w in row if w is not None)), row_id)
                   for row_id, result in zip(ids, rows) if (row := result.one()) is not None]
        self._execute_all(self._bound(f"DELETE FROM {{ks}}.{table} USING TIMESTAMP ? WHERE {key} = ?", stamped))

    def drop_hidden(self, kind: str, item_ids: Sequence[str]) -> None:
        self._execute_all(self._bound("DELETE FROM {ks}.hidden WHERE kind = ? AND item_id = ?",
                                      [(kind, item_id) for item_id in item_ids]))

    def personas_labelling(self, face_ids: Sequence[str]) -> set[str]:
        return {row.persona_id for row in self._select_in(
            f"SELECT {self._LABEL_COLUMNS} FROM {{ks}}.labels WHERE face_id IN ?", list(face_ids)) if _is_label(row)}

    def drop_labels_of_faces(self, face_ids: Sequence[str]) -> None:
        rows = [row for row in self._select_in(f"SELECT {self._LABEL_COLUMNS} FROM {{ks}}.labels WHERE face_id IN ?",
                                               list(face_ids)) if _is_label(row)]
        self._execute_all([
            *self._bound("DELETE FROM {ks}.labels_by_persona WHERE persona_id = ? AND verdict = ? AND face_id = ?",
                         [(row.persona_id, row.verdict, row.face_id) for row in rows]),
            *self._bound("DELETE FROM {ks}.labels WHERE face_id = ?", [(face_id,) for face_id in face_ids]),
        ])
        self._delete_after_writes("face_belongs", "face_id", ("persona_id",), list(face_ids))

    def drop_labels_of_persona(self, persona_id: str) -> None:
        labelled = [row.face_id for row in self._run(
            "SELECT face_id FROM {ks}.labels_by_persona WHERE persona_id = ?", (persona_id,), fetch_size=5000)]
        self._mark_unknown(labelled)  # losing their labels may make them unknown: rows first
        self._run_many("DELETE FROM {ks}.labels WHERE face_id = ? AND persona_id = ?",
                       [(face_id, persona_id) for face_id in labelled])
        self._run("DELETE FROM {ks}.labels_by_persona WHERE persona_id = ?", (persona_id,))
        self._sync_unknown(labelled)

    def drop_predictions_of_faces(self, face_ids: Sequence[str]) -> None:
        predictions = self.get_predictions(face_ids).values()
        self._execute_all([
            *self._unknown_rows(self._keys_of(face_ids).values(), present=False),
            *self._bound("DELETE FROM {ks}.persona_predictions WHERE persona_id = ? AND face_id = ?",
                         [(_persona_key(p.persona_id), p.face_id) for p in predictions]),
            *self._bound("DELETE FROM {ks}.face_predictions WHERE bucket = ? AND face_id = ?",
                         [(_prediction_bucket(p.face_id), p.face_id) for p in predictions]),
        ])

    def forget_events(self, subjects: set[str], persona_ids: set[str] = frozenset(), since: float = 0.0) -> None:
        """Deletes every event whose subject is one of these ids or that names one of these
        personas: one scan of the log (which retention keeps bounded) from `since`, the
        creation of the oldest thing erased (nothing names it before), less a margin for
        writers' clocks."""
        start = min_uuid_from_time(since - FORGET_CLOCK_MARGIN_S) if since > FORGET_CLOCK_MARGIN_S else None
        doomed = [(_bucket(event_id), event_id) for event_id, row in self._scan_events(start)
                  if row.subject in subjects or (row.attributes or {}).get("persona_id") in persona_ids]
        self._execute_all(self._batches("DELETE FROM {ks}.events_by_minute WHERE bucket = ? AND id = ?", doomed,
                                        partition=lambda row: row[0]))

    def _scrub_rename_events(self) -> None:
        """Migration 3: PERSONA_RENAMED events lose the display names they carried."""
        named = [(_bucket(event_id), event_id) for event_id, row in self._scan_events(None)
                 if row.type == pb.EVENT_TYPE_PERSONA_RENAMED and row.attributes]
        self._execute_all(self._bound("UPDATE {ks}.events_by_minute SET attributes = {{}} WHERE bucket = ? AND id = ?",
                                      named))

    def withdraw_model_versions(self, versions: list[ModelVersionRecord]) -> list[int]:
        for record in versions:
            # IF EXISTS: a lightweight transaction, ordered after a gate decision's (record_gate_decision).
            self._cas("UPDATE {ks}.model_versions SET state = ?, gate_reason = ? WHERE version = ? IF EXISTS",
                      (pb.MODEL_STATE_WITHDRAWN, WITHDRAWN_REASON, record.version),
                      "SELECT state FROM {ks}.model_versions WHERE version = ?", (record.version,),
                      lambda row: row.state == pb.MODEL_STATE_WITHDRAWN)
            self._run("DELETE FROM {ks}.model_artifact_chunks WHERE version = ?", (record.version,))
        # Nothing serves a withdrawn version from here on. Rows are WITHDRAWN first, so an
        # activation racing this sees the state after its own compare-and-set and undoes it.
        withdrawn = {str(record.version) for record in versions}
        if withdrawn:
            self.swap_meta(ACTIVE_VERSION_KEY, lambda current: "" if current in withdrawn else current)
        return [record.version for record in versions]

    # ---- images and faces -----------------------------------------------
    def put_image(self, image: ImageRecord, content: bytes, faces: list[FaceRecord]) -> bool:
        if list(self._run("SELECT image_id FROM {ks}.images WHERE image_id = ?", (image.image_id,))):
            return False
        chunks = _chunks(content)
        day = _day(image.create_time)
        self._remember_day("images", day)
        # Everything the image row makes visible, in flight at once; then the commit row.
        self._execute_all([
            *self._bound("INSERT INTO {ks}.image_chunks (image_id, chunk, data) VALUES (?, ?, ?)",
                         [(image.image_id, i, chunk) for i, chunk in enumerate(chunks)]),
            *self._face_writes(faces),
            *self._unknown_rows(UnknownFaceKey(image.create_time, image.image_id, f.index, f.face_id) for f in faces),
            self._stmt("INSERT INTO {ks}.images_by_day (day, create_time, image_id) VALUES (?, ?, ?)").bind(
                (day, image.create_time, image.image_id)),
        ])
        # The commit point: until this row exists the image and its faces' image are invisible.
        # Conditional, so of concurrent ingests of the same bytes exactly one stores the image
        # and appends IMAGE_INGESTED (the others wrote identical dependent rows: the ids
        # derive from the bytes).
        committer = uuid.uuid4().hex  # tells this call's commit from a racing ingest's of the same bytes
        committed = self._cas(
            "INSERT INTO {ks}.images (image_id, content_type, width, height, size_bytes, "
            "face_count, status, create_time, chunk_count, committed_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "IF NOT EXISTS",
            (image.image_id, image.content_type, image.width, image.height,
             image.size_bytes, image.face_count, image.status, image.create_time, len(chunks), committer),
            "SELECT committed_by FROM {ks}.images WHERE image_id = ?", (image.image_id,),
            lambda row: row.committed_by == committer)
        if not committed:
            return False
        self._name_committed_image(image)
        self.append_event(pb.EVENT_TYPE_IMAGE_INGESTED, image.image_id, {"face_count": image.face_count})
        return True

    def _name_committed_image(self, image: ImageRecord) -> None:
        """The file name stays out of the compare-and-set: Cassandra keeps a CAS's whole update in
        its Paxos state (system.paxos) for at least 3 h, where no erasure reaches (issue 25). It is
        written after, stamped with the commit's own time: an erasure that raced it is stamped after
        the commit (_delete_after_writes), so it still wins. A reader may see the name a moment late."""
        committed = self._run("SELECT WRITETIME(face_count) AS at FROM {ks}.images WHERE image_id = ?",
                              (image.image_id,)).one()
        if image.filename and committed is not None:
            self._run("UPDATE {ks}.images USING TIMESTAMP ? SET filename = ? WHERE image_id = ?",
                      (committed.at, image.filename, image.image_id))

    def _face_writes(self, faces: list[FaceRecord]) -> Iterator[Statement]:
        """Per face one batch of its face and crop rows (same key, same replicas), and the
        faces_by_image rows of each image as batches of that image's partition."""
        yield from self._face_rows(faces)
        yield from self._placements(faces)

    def _face_rows(self, faces: list[FaceRecord]) -> Iterator[Statement]:
        found = self._stmt("INSERT INTO {ks}.faces (face_id, image_id, idx, box, landmarks, embedding, create_time) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)")
        # A detected face writes no drawn_by cell at all (a null would be a tombstone per face).
        drawn = self._stmt("INSERT INTO {ks}.faces (face_id, image_id, idx, box, landmarks, embedding, create_time, "
                           "drawn_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
        crop = self._stmt("INSERT INTO {ks}.face_crops (face_id, crop) VALUES (?, ?)")
        for f in faces:
            batch = BatchStatement(BatchType.UNLOGGED)
            row = (f.face_id, f.image_id, f.index, json.dumps([int(v) for v in f.box]),
                   json.dumps([[float(x), float(y)] for x, y in f.landmarks]), embedding_to_bytes(f.embedding),
                   f.create_time)
            if f.drawn_by:
                batch.add(drawn, (*row, f.drawn_by))
            else:
                batch.add(found, row)
            batch.add(crop, (f.face_id, f.crop_jpeg))
            yield batch

    def _placements(self, faces: list[FaceRecord]) -> Iterator[Statement]:
        """The faces_by_image rows of each image, as batches of that image's partition."""
        return self._batches("INSERT INTO {ks}.faces_by_image (image_id, idx, face_id) VALUES (?, ?, ?)",
                             [(f.image_id, f.index, f.face_id) for f in faces], partition=lambda row: row[0])

    def _remember_day(self, kind: str, day: int) -> None:
        key = (kind, day)
        if key not in self._known_buckets:
            self._run("INSERT INTO {ks}.days (kind, day) VALUES (?, ?)", (kind, day))
            self._known_buckets.add(key)

    _IMAGE_COLUMNS = "image_id, filename, content_type, width, height, size_bytes, face_count, status, create_time"

    def get_image(self, image_id: str) -> ImageRecord | None:
        rows = list(self._run(f"SELECT {self._IMAGE_COLUMNS} FROM {{ks}}.images WHERE image_id = ?", (image_id,)))
        return ImageRecord(*rows[0]) if rows else None

    def get_image_content(self, image_id: str) -> bytes | None:
        rows = list(self._run("SELECT chunk_count FROM {ks}.images WHERE image_id = ?", (image_id,)))
        if not rows:
            return None
        return self._read_chunks("SELECT chunk, data FROM {ks}.image_chunks WHERE image_id = ?",
                                 image_id, rows[0].chunk_count)

    def _read_chunks(self, cql: str, key, count: int) -> bytes:
        chunks = {row.chunk: row.data or b"" for row in self._run(cql, (key,), fetch_size=4)}
        if len(chunks) < count:
            raise StoreCorrupt(f"{key!r}: {count - len(chunks)} of {count} stored chunks are missing")
        return b"".join(chunks[i] for i in range(count))

    def _newest_first(self, kind: str, table: str, id_column: str, offset: int, limit: int) -> list[str]:
        """Ids from a by-day index table, newest first, after skipping `offset`."""
        ids: list[str] = []
        skip = offset
        for day_row in self._run("SELECT day FROM {ks}.days WHERE kind = ?", (kind,), fetch_size=1000):
            for row in self._run(f"SELECT {id_column} FROM {{ks}}.{table} WHERE day = ?", (day_row.day,),
                                 fetch_size=max(100, min(5000, offset + limit))):
                if skip:
                    skip -= 1
                    continue
                ids.append(getattr(row, id_column))
                if len(ids) >= limit:
                    return ids
        return ids

    def list_images(self, offset: int, limit: int) -> list[ImageRecord]:
        if limit <= 0:
            return []
        # The index is written before the commit row: an id without an image row is an ingest in
        # flight (or one that crashed); it is not shown, and it does not count for paging either.
        images: list[ImageRecord] = []
        start = offset
        while len(images) < limit:
            ids = self._newest_first("images", "images_by_day", "image_id", start, limit - len(images))
            if not ids:
                break
            start += len(ids)
            found = {row.image_id: ImageRecord(*row) for row in self._select_in(
                f"SELECT {self._IMAGE_COLUMNS} FROM {{ks}}.images WHERE image_id IN ?", ids)}
            images.extend(found[i] for i in ids if i in found)
        return images

    def count_images(self) -> int:
        return self._run("SELECT COUNT(*) FROM {ks}.images", timeout=120).one()[0]

    _FACE_COLUMNS = "face_id, image_id, idx, box, landmarks, embedding, create_time, drawn_by"

    @staticmethod
    def _face(row, crop: bytes) -> FaceRecord:
        return FaceRecord(row.face_id, row.image_id, row.idx, tuple(json.loads(row.box)),
                          [tuple(p) for p in json.loads(row.landmarks)],
                          embedding_from_bytes(row.embedding), crop, row.create_time, row.drawn_by or "")

    def get_face(self, face_id: str) -> FaceRecord | None:
        faces = self.get_faces([face_id])
        return faces[0] if faces else None

    def get_faces(self, face_ids: Iterable[str]) -> list[FaceRecord]:
        face_ids = list(face_ids)
        rows = self._select_in(f"SELECT {self._FACE_COLUMNS} FROM {{ks}}.faces WHERE face_id IN ?", face_ids)
        crops = {row.face_id: row.crop or b"" for row in self._select_in(
            "SELECT face_id, crop FROM {ks}.face_crops WHERE face_id IN ?", [row.face_id for row in rows])}
        found = {row.face_id: self._face(row, crops.get(row.face_id, b"")) for row in rows}
        return [found[f] for f in face_ids if f in found]

    def faces_of_image(self, image_id: str) -> list[FaceRecord]:
        ids = [row.face_id for row in self._run(
            "SELECT face_id FROM {ks}.faces_by_image WHERE image_id = ?", (image_id,))]  # clustered by idx
        return self.get_faces(ids)

    def faces_of_images(self, image_ids: Iterable[str]) -> dict[str, list[FaceRecord]]:
        image_ids = list(image_ids)
        placed = sorted((row.image_id, row.idx, row.face_id) for row in self._select_in(
            "SELECT image_id, idx, face_id FROM {ks}.faces_by_image WHERE image_id IN ?", image_ids))
        rows = {row.face_id: row for row in self._select_in(
            f"SELECT {self._FACE_COLUMNS} FROM {{ks}}.faces WHERE face_id IN ?", [face_id for *_, face_id in placed])}
        faces: dict[str, list[FaceRecord]] = {image_id: [] for image_id in image_ids}
        for image_id, _idx, face_id in placed:
            if face_id in rows:
                faces[image_id].append(self._face(rows[face_id], b""))
        return faces

    def count_faces(self) -> int:
        # One COUNT(*) over the whole table is one range read the node must finish within its
        # range-read timeout: at 1M faces on a busy node it fails. COUNT_RANGES token ranges,
        # counted many at a time, are each a small read.
        bounded = self._stmt("SELECT COUNT(*) FROM {ks}.faces WHERE token(face_id) >= ? AND token(face_id) < ?")
        last = self._stmt("SELECT COUNT(*) FROM {ks}.faces WHERE token(face_id) >= ?")
        ranges = [_token_bounds(shard, COUNT_RANGES) for shard in range(COUNT_RANGES)]
        statements = [(bounded, (low, high)) if high is not None else (last, (low,)) for low, high in ranges]
        return sum(result.one()[0] for result in self._execute_each([stmt.bind(args) for stmt, args in statements]))

    def iter_embeddings(self, batch_size: int = 8192) -> Iterator[tuple[list[str], np.ndarray]]:
        # One paged scan in token order; the driver fetches the next page while we build this batch.
        rows = self._run("SELECT face_id, embedding FROM {ks}.faces", fetch_size=min(batch_size, 5000),
                         timeout=120)
        yield from _embedding_batches(rows, batch_size)

    # ---- labels ----------------------------------------------------------
    # A face's one BELONGS label: face_belongs holds the persona the face belongs to ("": none),
    # changed only by compare-and-set on that one regular column (conditions every Cassandra
    # Visage runs on accepts: no batch, no static column). A BELONGS row of `labels` stands only
    # while the cell names its persona; any other BELONGS row is stale (replaced, or its writer
    # died before its compare-and-set) and every reader skips it (_standing). Writers publish
    # after they write and unpublish before they delete: a BELONGS label writes its rows, then
    # sets the cell to its persona; a change that ends the standing BELONGS label first moves
    # the cell away. Rows left stale are deleted USING TIMESTAMP of the change's start, so a row
    # a concurrent labeller wrote since survives (one missed that way only costs count_labels
    # an extra count until the face is labelled again).
    def write_label(self, label: LabelRecord) -> None:
        belongs = label.verdict == pb.VERDICT_BELONGS
        if not belongs:  # may make the face unknown: its row first
            self._mark_unknown([label.face_id])

        def write_rows(_started: int) -> None:
            self._execute_all([
                self._stmt("INSERT INTO {ks}.labels_by_persona (persona_id, verdict, face_id) VALUES (?, ?, ?)").bind(
                    (label.persona_id, label.verdict, label.face_id)),
                self._stmt(f"INSERT INTO {{ks}}.labels ({self._LABEL_COLUMNS}) VALUES (?, ?, ?, ?, ?)").bind(
                    (label.face_id, label.persona_id, label.verdict, label.labelled_by, label.create_time)),
            ])

        def change(cell: str) -> str | None:
            if belongs:
                return label.persona_id
            return "" if cell == label.persona_id else None  # None: the cell stays as it is

        cell, rows, started = self._relabel(label.face_id, change, write_rows, publishes=belongs)
        stale = [(label.persona_id, row.verdict) for row in rows
                 if row.persona_id == label.persona_id and row.verdict != label.verdict]
        if belongs and cell not in ("", label.persona_id):  # the BELONGS label this one replaced
            stale.append((cell, pb.VERDICT_BELONGS))
            self._run("DELETE FROM {ks}.labels USING TIMESTAMP ? WHERE face_id = ? AND persona_id = ?",
                      (started, label.face_id, cell))
        self._forget_index_rows(label.face_id, stale, started)
        self._sync_unknown([label.face_id])

    def remove_label(self, face_id: str, persona_id: str) -> bool:
        def delete_rows(started: int) -> None:
            self._run("DELETE FROM {ks}.labels USING TIMESTAMP ? WHERE face_id = ? AND persona_id = ?",
                      (started, face_id, persona_id))

        def change(cell: str) -> str | None:
            return "" if cell == persona_id else None

        self._mark_unknown([face_id])  # losing a label may make the face unknown: its row first
        _cell, rows, started = self._relabel(face_id, change, delete_rows, publishes=False)
        removed = [row for row in rows if row.persona_id == persona_id]
        self._sync_unknown([face_id])
        if not removed:
            return False
        self._forget_index_rows(face_id, [(persona_id, row.verdict) for row in removed], started)
        return True

    def _relabel(self, face_id: str, change: Callable[[str], str | None], write: Callable[[int], None],
                 publishes: bool) -> tuple[str, list, int]:
        """One label change of a face: `write(started)` writes (or deletes) its rows and `change(cell)`
        says what the face's BELONGS cell becomes (None: unchanged). A change that `publishes`
        writes first, then sets the cell; one that unpublishes sets it first, then writes. A
        lost compare-and-set reads again and starts over. Returns the cell it replaced, the
        face's label rows before the change (stale ones too) and the change's start timestamp."""
        serial = False
        for _attempt in range(LWT_ATTEMPTS):
            started = self._cluster.timestamp_generator()
            read = "SELECT persona_id FROM {ks}.face_belongs WHERE face_id = ?"
            row = self._serial_read(read, (face_id,)) if serial else self._run(read, (face_id,)).one()
            cell = None if row is None else (row.persona_id or "")
            rows = [r for r in self._run(f"SELECT {self._LABEL_COLUMNS} FROM {{ks}}.labels WHERE face_id = ?",
                                         (face_id,)) if _is_label(r)]
            wanted = change(cell or "")
            if publishes:
                write(started)
            if wanted is None or self._swap_belongs(face_id, cell, wanted):
                if not publishes:
                    write(started)
                return cell or "", rows, started
            serial = True  # lost a race: read what won it
        raise StoreConflict(f"labels of face {face_id!r} kept changing under {LWT_ATTEMPTS} attempts; retry")

    def _swap_belongs(self, face_id: str, current: str | None, wanted: str) -> bool:
        """Compare-and-set of the face's BELONGS cell (current None: no row yet)."""
        read, ours = "SELECT persona_id FROM {ks}.face_belongs WHERE face_id = ?", lambda row: row.persona_id == wanted
        if current is None:
            return self._cas("INSERT INTO {ks}.face_belongs (face_id, persona_id) VALUES (?, ?) IF NOT EXISTS",
                             (face_id, wanted), read, (face_id,), ours)
        return self._cas("UPDATE {ks}.face_belongs SET persona_id = ? WHERE face_id = ? IF persona_id = ?",
                         (wanted, face_id, current), read, (face_id,), ours)

    def _forget_index_rows(self, face_id: str, entries: list[tuple[str, int]], started: int) -> None:
        """Deletes labels_by_persona rows (persona, verdict) of the face written before `started`."""
        self._execute_all(self._bound(
            "DELETE FROM {ks}.labels_by_persona USING TIMESTAMP ? WHERE persona_id = ? AND verdict = ? AND face_id = ?",
            [(started, persona_id, verdict, face_id) for persona_id, verdict in dict.fromkeys(entries)]))

    def _standing(self, rows: list) -> list[LabelRecord]:
        """The labels of these rows that stand: every row but a BELONGS row whose face's cell
        names another persona (see "labels" above)."""
        rows = [row for row in rows if _is_label(row)]
        cells = {row.face_id: row.persona_id for row in self._select_in(
            "SELECT face_id, persona_id FROM {ks}.face_belongs WHERE face_id IN ?",
            [row.face_id for row in rows if row.verdict == pb.VERDICT_BELONGS])}
        return [LabelRecord(*row[:5]) for row in rows
                if row.verdict != pb.VERDICT_BELONGS or cells.get(row.face_id) == row.persona_id]

    def _add_column(self, table: str, column: str, kind: str) -> None:
        """ALTER TABLE ADD, once (Cassandra 3 / Cosmos DB know no ADD IF NOT EXISTS)."""
        if not self._has_column(table, column):
            self._session.execute(f"ALTER TABLE {self.keyspace}.{table} ADD {column} {kind}", timeout=120)

    def _has_column(self, table: str, column: str) -> bool:
        return bool(list(self._run("SELECT column_name FROM system_schema.columns WHERE keyspace_name = ? "
                                   "AND table_name = ? AND column_name = ?", (self.keyspace, table, column))))

    def _fill_belongs(self) -> None:
        """Migration 5: each face's `belongs` cell names its (newest) BELONGS label's persona."""
        newest: dict[str, tuple[float, str]] = {}
        for row in self._session.execute(f"SELECT face_id, persona_id, verdict, create_time "
                                         f"FROM {self.keyspace}.labels", timeout=120):
            if row.verdict == pb.VERDICT_BELONGS and row.create_time >= newest.get(row.face_id, (-1.0, ""))[0]:
                newest[row.face_id] = (row.create_time, row.persona_id)
        self._run_many("UPDATE {ks}.labels SET belongs = ? WHERE face_id = ?",
                       [(persona_id, face_id) for face_id, (_t, persona_id) in newest.items()])

    def _move_belongs_cells(self) -> None:
        """Migration 8: the static `belongs` cells of labels partitions move to face_belongs
        (a static column in a condition is refused by Cosmos DB), then the column goes."""
        if not self._has_column("labels", "belongs"):
            return  # moved already (a retry after the drop)
        cells = [(row.face_id, row.belongs or "") for row in self._session.execute(
            f"SELECT DISTINCT face_id, belongs FROM {self.keyspace}.labels", timeout=120)]
        self._run_many("INSERT INTO {ks}.face_belongs (face_id, persona_id) VALUES (?, ?) IF NOT EXISTS", cells)
        self._session.execute(f"ALTER TABLE {self.keyspace}.labels DROP belongs", timeout=120)

    _LABEL_COLUMNS = "face_id, persona_id, verdict, labelled_by, create_time"

    # ---- hidden faces and personas ----------------------------------------
    def set_hidden(self, kind: str, item_id: str, hidden: bool) -> None:
        exists = self.get_face(item_id) is not None if kind == "face" else self.get_persona(item_id) is not None
        if not exists:
            raise NotFound(f"{kind} {item_id!r} not found")
        if (item_id in self.hidden_ids(kind)) == hidden:
            return
        if hidden:
            self._run("INSERT INTO {ks}.hidden (kind, item_id) VALUES (?, ?)", (kind, item_id))
        else:
            self._run("DELETE FROM {ks}.hidden WHERE kind = ? AND item_id = ?", (kind, item_id))
        self.append_event(pb.EVENT_TYPE_HIDDEN_CHANGED, item_id, {"kind": kind, "hidden": str(hidden).lower()})

    def hidden_ids(self, kind: str) -> set[str]:
        return {row.item_id for row in self._run("SELECT item_id FROM {ks}.hidden WHERE kind = ?", (kind,),
                                                 fetch_size=5000)}

    def labels_of_face(self, face_id: str) -> list[LabelRecord]:
        return self.labels_of_faces([face_id])[face_id]

    def labels_of_faces(self, face_ids: Iterable[str]) -> dict[str, list[LabelRecord]]:
        labels: dict[str, list[LabelRecord]] = {face_id: [] for face_id in face_ids}
        rows = self._select_in(f"SELECT {self._LABEL_COLUMNS} FROM {{ks}}.labels WHERE face_id IN ?", list(labels))
        for label in self._standing(rows):
            labels[label.face_id].append(label)
        for face_labels in labels.values():
            face_labels.sort(key=lambda l: -l.create_time)
        return labels

    def labels_of_persona(self, persona_id: str, verdict: int) -> list[LabelRecord]:
        face_ids = [row.face_id for row in self._run(
            "SELECT face_id FROM {ks}.labels_by_persona WHERE persona_id = ? AND verdict = ?",
            (persona_id, verdict), fetch_size=5000)]
        results = self._run_many(
            f"SELECT {self._LABEL_COLUMNS} FROM {{ks}}.labels WHERE face_id IN ? AND persona_id = ?",
            [(group, persona_id) for group in _groups(face_ids, ID_CHUNK)])
        labels = self._standing([row for result in results for row in result if row.verdict == verdict])
        return sorted(labels, key=lambda l: -l.create_time)

    def count_labels(self, persona_ids: Iterable[str], verdict: int) -> dict[str, int]:
        # Counts the index (one small read per persona); see count_predictions on crashed writes.
        persona_ids = list(dict.fromkeys(persona_ids))
        results = self._run_many("SELECT COUNT(*) FROM {ks}.labels_by_persona WHERE persona_id = ? AND verdict = ?",
                                  [(persona_id, verdict) for persona_id in persona_ids])
        return {persona_id: result.one()[0] for persona_id, result in zip(persona_ids, results)}

    def iter_labels(self) -> Iterator[LabelRecord]:
        rows = iter(self._run(f"SELECT {self._LABEL_COLUMNS} FROM {{ks}}.labels", fetch_size=5000, timeout=120))
        while page := list(itertools.islice(rows, 5000)):
            yield from self._standing(page)

    # ---- predictions -----------------------------------------------------
    _PREDICTION_COLUMNS = "face_id, persona_id, confidence, model_version, create_time"

    def put_predictions(self, predictions: list[PredictionRecord]) -> None:
        latest = {p.face_id: p for p in predictions}  # the last one of a face wins, as in SQLite
        if latest:
            self._replace_predictions(latest, self.get_predictions(latest))

    def put_prediction_columns(self, face_ids, persona_ids, confidences, model_version: int, create_time: float,
                               changed_only: bool = False) -> int:
        check_prediction_columns(face_ids, persona_ids, confidences)
        confidences = np.asarray(confidences).tolist()
        previous = self.get_predictions(face_ids)
        rows = (changed_rows(stored_verdicts(previous), face_ids, persona_ids, confidences) if changed_only
                else range(len(face_ids)))
        latest = {face_ids[i]: PredictionRecord(face_ids[i], persona_ids[i], confidences[i], model_version, create_time)
                  for i in rows}
        if latest:
            self._replace_predictions(latest, previous)
        return len(latest)

    def _replace_predictions(self, latest: dict[str, PredictionRecord], previous: dict[str, PredictionRecord]) -> None:
        """Writes these predictions over the previous ones, with their index rows: rows that make
        a prediction findable first, rows it makes stale after (a crash leaves rows too many,
        which readers check and skip)."""
        labels = self.labels_of_faces(latest)
        unknown_before = {f for f in latest if is_unknown(labels[f], previous.get(f))}
        unknown_after = {f for f in latest if is_unknown(labels[f], latest[f])}
        keys = self._keys_of(unknown_before ^ unknown_after)
        moved = [(face_id, previous[face_id].persona_id) for face_id, p in latest.items()
                 if face_id in previous and previous[face_id].persona_id != p.persona_id]
        self._execute_all([
            *self._batches("INSERT INTO {ks}.persona_predictions (persona_id, face_id) VALUES (?, ?)",
                           [(_persona_key(p.persona_id), p.face_id) for p in latest.values()
                            if p.persona_id and (p.face_id not in previous
                                                 or previous[p.face_id].persona_id != p.persona_id)],
                           partition=lambda row: row[0]),
            *self._unknown_rows(keys[f] for f in unknown_after - unknown_before if f in keys),
        ])
        self._write_prediction_rows((_prediction_bucket(p.face_id), p.face_id, p.persona_id, float(p.confidence),
                                     p.model_version, p.create_time) for p in latest.values())
        self._execute_all([
            *self._batches("DELETE FROM {ks}.persona_predictions WHERE persona_id = ? AND face_id = ?",
                           [(_persona_key(persona_id), face_id) for face_id, persona_id in moved if persona_id],
                           partition=lambda row: row[0]),
            *self._unknown_rows((keys[f] for f in unknown_before - unknown_after if f in keys), present=False),
        ])

    def _write_prediction_rows(self, rows: Iterable[tuple]) -> None:
        """(bucket, face_id, persona_id, confidence, model_version, create_time) rows, batched by bucket."""
        self._execute_all(self._batches(
            f"INSERT INTO {{ks}}.face_predictions (bucket, {self._PREDICTION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
            rows, partition=lambda row: row[0]))

    def _move_predictions_to_buckets(self) -> None:
        """Migration 2: copies schema 1's predictions table (one partition per face) into face_predictions."""
        if not list(self._run("SELECT table_name FROM system_schema.tables WHERE keyspace_name = ? "
                              "AND table_name = 'predictions'", (self.keyspace,))):
            return  # a new keyspace, or the copy already finished and the old table is gone
        rows = iter(self._session.execute(f"SELECT {self._PREDICTION_COLUMNS} FROM {self.keyspace}.predictions",
                                          timeout=120))
        while chunk := list(itertools.islice(rows, 50_000)):  # bounded memory for millions of faces
            self._write_prediction_rows((_prediction_bucket(row.face_id), *row) for row in chunk)

    def get_prediction(self, face_id: str) -> PredictionRecord | None:
        return self.get_predictions([face_id]).get(face_id)

    def get_predictions(self, face_ids: Iterable[str]) -> dict[str, PredictionRecord]:
        by_bucket = _by_partition(((face_id,) for face_id in dict.fromkeys(face_ids)),
                                  lambda row: _prediction_bucket(row[0]))
        results = self._run_many(
            f"SELECT {self._PREDICTION_COLUMNS} FROM {{ks}}.face_predictions WHERE bucket = ? AND face_id IN ?",
            [(bucket, [row[0] for row in group]) for bucket, rows in by_bucket.items()
             for group in _groups(rows, ID_CHUNK)])
        return {row.face_id: PredictionRecord(*row) for result in results for row in result}

    def _predictions_in_index(self, persona_id: str) -> list[PredictionRecord]:
        """The predictions the index names, checked against the base table (an index row can
        outlive its prediction when a writer crashed between the two writes)."""
        if not persona_id:
            return []  # "" (unknown) is not indexed by persona: see list_unknown_faces
        face_ids = [row.face_id for row in self._run(
            "SELECT face_id FROM {ks}.persona_predictions WHERE persona_id = ?", (persona_id,), fetch_size=5000)]
        return [p for p in self.get_predictions(face_ids).values() if p.persona_id == persona_id]

    def predictions_of_persona(self, persona_id: str) -> list[PredictionRecord]:
        return sorted(self._predictions_in_index(persona_id), key=lambda p: -p.confidence)

    def count_predictions(self, persona_ids: Iterable[str]) -> dict[str, int]:
        # Counts the persona's index partition server-side; only the counts travel. A write
        # that crashed midway can leave index rows the base table does not confirm (readers of
        # the rows check them); they are counted until a later prediction of the face naming
        # that same persona replaces them (one naming another persona leaves them: an over-count
        # after a crash, never a face missing from a list).
        persona_ids = list(dict.fromkeys(persona_ids))
        named = [persona_id for persona_id in persona_ids if persona_id]
        results = self._run_many("SELECT COUNT(*) FROM {ks}.persona_predictions WHERE persona_id = ?",
                                 [(persona_id,) for persona_id in named])
        counts = dict.fromkeys(persona_ids, 0)
        counts.update({persona_id: result.one()[0] for persona_id, result in zip(named, results)})
        return counts

    def drop_verdicts_naming(self, persona_ids: Sequence[str]) -> None:
        """Deletes the stored verdicts naming these (deleted) personas; their faces become
        unknown unless a label says otherwise."""
        for persona_id in persona_ids:
            named = [p.face_id for p in self._predictions_in_index(persona_id)]
            self._mark_unknown(named)
            self._execute_all(self._batches("DELETE FROM {ks}.face_predictions WHERE bucket = ? AND face_id = ?",
                                            [(_prediction_bucket(face_id), face_id) for face_id in named],
                                            partition=lambda row: row[0]))
            self._run("DELETE FROM {ks}.persona_predictions WHERE persona_id = ?", (_persona_key(persona_id),))
            self._sync_unknown(named)

    # ---- unknown faces -----------------------------------------------------
    def _unknown_rows(self, keys: Iterable[UnknownFaceKey], present: bool = True) -> Iterator[Statement]:
        """Inserts (or deletes) these keys' unknown_faces rows, batched by partition."""
        rows = [(_unknown_bucket(k.image_id), k.image_time, k.image_id, k.index, k.face_id) for k in keys]
        if present:
            return self._batches("INSERT INTO {ks}.unknown_faces (bucket, image_time, image_id, idx, face_id) "
                                 "VALUES (?, ?, ?, ?, ?)", rows, partition=lambda row: row[0])
        return self._batches("DELETE FROM {ks}.unknown_faces WHERE bucket = ? AND image_time = ? AND image_id = ? "
                             "AND idx = ?", [row[:4] for row in rows], partition=lambda row: row[0])

    def _keys_of(self, face_ids: Iterable[str]) -> dict[str, UnknownFaceKey]:
        """The index keys of these faces (those stored, with their image row)."""
        faces = self._select_in("SELECT face_id, image_id, idx FROM {ks}.faces WHERE face_id IN ?", list(face_ids))
        times = {row.image_id: row.create_time for row in self._select_in(
            "SELECT image_id, create_time FROM {ks}.images WHERE image_id IN ?", [row.image_id for row in faces])}
        return {row.face_id: UnknownFaceKey(times[row.image_id], row.image_id, row.idx, row.face_id)
                for row in faces if row.image_id in times}

    def _unknown_now(self, face_ids: Iterable[str]) -> dict[str, tuple[UnknownFaceKey, bool]]:
        """Each stored face's index key and whether it is unknown now (from the base tables)."""
        keys = self._keys_of(face_ids)
        labels = self.labels_of_faces(keys)
        predictions = self.get_predictions(keys)
        return {face_id: (key, is_unknown(labels[face_id], predictions.get(face_id))) for face_id, key in keys.items()}

    def _mark_unknown(self, face_ids: list[str]) -> None:
        """Before a change that may make these faces unknown: their rows (see the module doc)."""
        if face_ids:
            self._execute_all(self._unknown_rows(self._keys_of(face_ids).values()))

    def _sync_unknown(self, face_ids: list[str], delete_known: bool = True) -> None:
        """After a change: rows for the faces that are unknown, none for the others."""
        if not face_ids:
            return
        now_unknown = self._unknown_now(face_ids)
        self._execute_all([
            *self._unknown_rows(key for key, unknown in now_unknown.values() if unknown),
            *(self._unknown_rows((key for key, unknown in now_unknown.values() if not unknown), present=False)
              if delete_known else []),
        ])

    def _unknown_candidates(self, after: UnknownFaceKey | None, limit: int) -> list[UnknownFaceKey]:
        """The first `limit` index rows after `after`, unchecked: each partition's, merged."""
        columns = "SELECT image_time, image_id, idx, face_id FROM {ks}.unknown_faces WHERE bucket = ?"
        if after is None:
            statements = [self._stmt(columns + " LIMIT ?").bind((bucket, limit)) for bucket in range(UNKNOWN_BUCKETS)]
        else:
            same_time = self._stmt(columns + " AND image_time = ? AND (image_id, idx) > (?, ?) LIMIT ?")
            older = self._stmt(columns + " AND image_time < ? LIMIT ?")
            statements = [statement for bucket in range(UNKNOWN_BUCKETS) for statement in (
                same_time.bind((bucket, after.image_time, after.image_id, after.index, limit)),
                older.bind((bucket, after.image_time, limit)))]
        keys = [UnknownFaceKey(*row) for result in self._execute_each(statements) for row in result]
        return sorted(keys, key=UnknownFaceKey.order)[:limit]

    def list_unknown_faces(self, after: UnknownFaceKey | None, limit: int) -> list[UnknownFaceKey]:
        found: list[UnknownFaceKey] = []
        while len(found) < limit:
            wanted = limit - len(found) + UNKNOWN_SLACK
            candidates = self._unknown_candidates(after, wanted)
            now_unknown = self._unknown_now(key.face_id for key in candidates)
            for key in candidates:  # a row stands only if the base tables say so
                if now_unknown.get(key.face_id) == (key, True):
                    found.append(key)
                    if len(found) == limit:
                        break
            if len(candidates) < wanted:
                break
            after = candidates[-1]
        return found

    def _tune_for_erasure(self) -> None:
        """Migration 11 (and BASELINE): on Apache Cassandra the tables holding erasable content drop
        an erased row at the next compaction of the SSTable holding it (portable_cql.erasure_table_options),
        which `nodetool garbagecollect` forces (README "Privacy"). Cosmos DB refuses these options and
        keeps no SSTables to compact."""
        if self.config.backend != "apache":
            return
        options = portable_cql.erasure_table_options(self.config.erased_grace_seconds)
        for table in ERASABLE_CONTENT_TABLES:
            self._session.execute(f"ALTER TABLE {self.keyspace}.{table} WITH {options}", timeout=120)

    def _shorten_grace(self, table: str) -> None:
        """Migration 6: tombstones of an index whose rows readers check need not outlive a
        repair cycle (a resurrected row is skipped). Cosmos DB refuses the option."""
        if self.config.backend != "apache":
            return
        try:
            self._session.execute(f"ALTER TABLE {self.keyspace}.{table} WITH gc_grace_seconds = {UNKNOWN_GRACE_S}",
                                  timeout=120)
        except Exception as error:  # noqa: BLE001 - e.g. Cosmos DB: only a cost, never a wrong answer
            log.warning("keeping the default gc_grace_seconds of %s: %s", table, error)

    def _move_to_last_verdict(self) -> None:
        """Migration 6: verdicts of versions no longer active go (they had no say), the others
        are indexed by persona, and every face's unknown_faces row is written."""
        active = self.get_meta(ACTIVE_VERSION_KEY) or ""
        rows = iter(self._session.execute(f"SELECT bucket, face_id, persona_id, model_version "
                                          f"FROM {self.keyspace}.face_predictions", timeout=120))
        while chunk := list(itertools.islice(rows, 50_000)):
            self._execute_all([
                *self._batches("DELETE FROM {ks}.face_predictions WHERE bucket = ? AND face_id = ?",
                               [(row.bucket, row.face_id) for row in chunk if str(row.model_version) != active],
                               partition=lambda row: row[0]),
                *self._batches("INSERT INTO {ks}.persona_predictions (persona_id, face_id) VALUES (?, ?)",
                               [(row.persona_id, row.face_id) for row in chunk
                                if str(row.model_version) == active and row.persona_id],
                               partition=lambda row: row[0]),
            ])
        faces = iter(self._session.execute(f"SELECT face_id FROM {self.keyspace}.faces", timeout=120))
        while chunk := [row.face_id for row in itertools.islice(faces, 5_000)]:
            self._sync_unknown(chunk, delete_known=False)

    def iter_predictions(self) -> Iterator[PredictionRecord]:
        for row in self._run(f"SELECT {self._PREDICTION_COLUMNS} FROM {{ks}}.face_predictions", fetch_size=5000,
                             timeout=120):
            yield PredictionRecord(*row)

    # ---- model versions --------------------------------------------------
    _VERSION_COLUMNS = ("version, state, algorithm, unknown_threshold, persona_ids, metrics, lineage, gate_reason, "
                        "create_time, activate_time")

    @staticmethod
    def _version(row, active: str | None) -> ModelVersionRecord:
        """The record, its state as the active-version cell says: that cell (changed only by
        compare-and-set) is the truth, the row's state a hint a racing activation may have
        left behind, so no two versions ever read as ACTIVE."""
        state = row.state
        if str(row.version) == active and state != pb.MODEL_STATE_WITHDRAWN:
            state = pb.MODEL_STATE_ACTIVE
        elif state == pb.MODEL_STATE_ACTIVE:
            state = pb.MODEL_STATE_RETIRED
        return ModelVersionRecord(row.version, state, row.algorithm, row.unknown_threshold,
                                  json.loads(row.persona_ids), json.loads(row.metrics), json.loads(row.lineage),
                                  row.gate_reason, row.create_time, row.activate_time)

    def put_model_version(self, record: ModelVersionRecord, artifact: bytes) -> ModelVersionRecord:
        if not record.version:
            record.version = self._claim_version_number()
        chunks = _chunks(artifact)
        self._run("DELETE FROM {ks}.model_artifact_chunks WHERE version = ?", (record.version,))
        self._run_many("INSERT INTO {ks}.model_artifact_chunks (version, chunk, data) VALUES (?, ?, ?)",
                       [(record.version, i, chunk) for i, chunk in enumerate(chunks)])
        self._run(f"INSERT INTO {{ks}}.model_versions ({self._VERSION_COLUMNS}, chunk_count) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (record.version, record.state, record.algorithm, float(record.unknown_threshold),
                   json.dumps(record.persona_ids), json.dumps(record.metrics), json.dumps(record.lineage),
                   record.gate_reason, record.create_time, record.activate_time, len(chunks)))
        return record

    def _claim_version_number(self) -> int:
        """The next version number, claimed with an LWT: two trainers never write one number."""
        taken = [row.version for row in self._run("SELECT version FROM {ks}.version_numbers")]
        taken += [row.version for row in self._run("SELECT version FROM {ks}.model_versions")]  # older schemas
        candidate = max(taken, default=0) + 1
        for _attempt in range(LWT_ATTEMPTS):
            claimed_at = now()
            if self._cas("INSERT INTO {ks}.version_numbers (version, claimed_at) VALUES (?, ?) IF NOT EXISTS",
                         (candidate, claimed_at), "SELECT claimed_at FROM {ks}.version_numbers WHERE version = ?",
                         (candidate,), lambda row: row.claimed_at == claimed_at):
                return candidate
            candidate += 1
        raise StoreConflict(f"could not claim a model version number in {LWT_ATTEMPTS} attempts; retry")

    def update_model_version(self, record: ModelVersionRecord) -> None:
        if self.get_model_version(record.version) is None:
            return  # like SQLite's UPDATE of a missing row (a Cassandra UPDATE would create one)
        self._run("UPDATE {ks}.model_versions SET state = ?, gate_reason = ?, metrics = ?, activate_time = ? "
                  "WHERE version = ?",
                  (record.state, record.gate_reason, json.dumps(record.metrics), record.activate_time,
                   record.version))

    def record_gate_decision(self, version: int, state: int, gate_reason: str) -> bool:
        # Compare-and-set from the state read (one equality condition: what every Cassandra
        # Visage runs on accepts), never from WITHDRAWN. The withdrawal is a lightweight
        # transaction too, so whichever comes later wins.
        for _attempt in range(LWT_ATTEMPTS):
            row = self._serial_read("SELECT state FROM {ks}.model_versions WHERE version = ?", (version,))
            if row is None or row.state == pb.MODEL_STATE_WITHDRAWN:
                return False
            if self._cas("UPDATE {ks}.model_versions SET state = ?, gate_reason = ? WHERE version = ? IF state = ?",
                         (state, gate_reason, version, row.state),
                         "SELECT state, gate_reason FROM {ks}.model_versions WHERE version = ?", (version,),
                         lambda row: (row.state, row.gate_reason) == (state, gate_reason)):
                return True
        raise StoreConflict(f"model version {version} kept changing under {LWT_ATTEMPTS} attempts; retry")

    def get_model_version(self, version: int) -> ModelVersionRecord | None:
        rows = list(self._run(f"SELECT {self._VERSION_COLUMNS} FROM {{ks}}.model_versions WHERE version = ?",
                              (version,)))
        return self._version(rows[0], self.get_meta(ACTIVE_VERSION_KEY)) if rows else None

    def get_model_artifact(self, version: int) -> bytes | None:
        rows = list(self._run("SELECT chunk_count, state FROM {ks}.model_versions WHERE version = ?", (version,)))
        # WITHDRAWN: trained on erased labels; chunk_count 0: deleted by retention.
        if not rows or rows[0].state == pb.MODEL_STATE_WITHDRAWN or not rows[0].chunk_count:
            return None
        return self._read_chunks("SELECT chunk, data FROM {ks}.model_artifact_chunks WHERE version = ?",
                                 version, rows[0].chunk_count)

    def delete_model_artifact(self, version: int) -> bool:
        rows = list(self._run("SELECT chunk_count FROM {ks}.model_versions WHERE version = ?", (version,)))
        if not rows or not rows[0].chunk_count:
            return False
        self._run("DELETE FROM {ks}.model_artifact_chunks WHERE version = ?", (version,))
        # chunk_count 0 marks the artifact gone (get_model_artifact then answers None).
        self._run("UPDATE {ks}.model_versions SET chunk_count = ? WHERE version = ?", (0, version))
        return True

    def list_model_versions(self) -> list[ModelVersionRecord]:
        active = self.get_meta(ACTIVE_VERSION_KEY)
        rows = self._run(f"SELECT {self._VERSION_COLUMNS} FROM {{ks}}.model_versions", fetch_size=1000)
        return sorted((self._version(row, active) for row in rows), key=lambda v: -v.version)

    def activate_model_version(self, version: int, gate_reason: str | None = None) -> ModelVersionRecord:
        record = self.get_model_version(version)
        if record is None:
            raise NotFound(f"model version {version} not found")
        self.check_activatable(record)
        if gate_reason is not None:  # before the transition: a reader of the active version sees it
            self._run("UPDATE {ks}.model_versions SET gate_reason = ? WHERE version = ?", (gate_reason, version))
        # The one conditional transition: the active-version cell, compare-and-set from what
        # it held to this version. Rows' states follow as hints (see _version).
        previous = self.swap_meta(ACTIVE_VERSION_KEY, lambda _current: str(version))
        row = self._run("SELECT state FROM {ks}.model_versions WHERE version = ?", (version,)).one()
        if row is not None and row.state == pb.MODEL_STATE_WITHDRAWN:  # an erasure raced this activation
            self.swap_meta(ACTIVE_VERSION_KEY, lambda current: "" if current == str(version) else current)
            if gate_reason is not None:  # the withdrawal's reason, which ours may have overwritten
                self._run("UPDATE {ks}.model_versions SET gate_reason = ? WHERE version = ?",
                          (WITHDRAWN_REASON, version))
            raise Withdrawn(f"model version {version} was {WITHDRAWN_REASON}; it cannot be activated")
        self._run("UPDATE {ks}.model_versions SET state = ?, activate_time = ? WHERE version = ?",
                  (pb.MODEL_STATE_ACTIVE, now(), version))
        if previous and previous != str(version):
            self._run("UPDATE {ks}.model_versions SET state = ? WHERE version = ?",
                      (pb.MODEL_STATE_RETIRED, int(previous)))
        self.append_event(pb.EVENT_TYPE_MODEL_VERSION_ACTIVATED, str(version))
        return self.get_model_version(version)

    def swap_meta(self, key: str, change: Callable[[str], str]) -> str:
        row = self._serial_read("SELECT value FROM {ks}.meta WHERE key = ?", (key,))
        current = row.value if row else None
        read = "SELECT value FROM {ks}.meta WHERE key = ?"
        for _attempt in range(LWT_ATTEMPTS):
            wanted = change(current or "")
            if current is None:
                applied = self._cas("INSERT INTO {ks}.meta (key, value) VALUES (?, ?) IF NOT EXISTS", (key, wanted),
                                    read, (key,), lambda row: row.value == wanted)
            else:
                applied = self._cas("UPDATE {ks}.meta SET value = ? WHERE key = ? IF value = ?", (wanted, key, current),
                                    read, (key,), lambda row: row.value == wanted)
            if applied:
                return current or ""
            row = self._serial_read(read, (key,))  # what won the race
            current = row.value if row else None
        raise StoreConflict(f"{key} kept changing under {LWT_ATTEMPTS} attempts; retry")

    def active_model_version(self) -> ModelVersionRecord | None:
        value = self.get_meta(ACTIVE_VERSION_KEY)
        return self.get_model_version(int(value)) if value else None

    def restore_model_version(self, record: ModelVersionRecord, artifact: bytes | None) -> None:
        self._run("INSERT INTO {ks}.version_numbers (version, claimed_at) VALUES (?, ?) IF NOT EXISTS",
                  (record.version, record.create_time))
        chunks = [] if artifact is None else _chunks(artifact)
        self._run("DELETE FROM {ks}.model_artifact_chunks WHERE version = ?", (record.version,))
        self._run_many("INSERT INTO {ks}.model_artifact_chunks (version, chunk, data) VALUES (?, ?, ?)",
                       [(record.version, i, chunk) for i, chunk in enumerate(chunks)])
        self._run(f"INSERT INTO {{ks}}.model_versions ({self._VERSION_COLUMNS}, chunk_count) "
                  "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  (record.version, record.state, record.algorithm, float(record.unknown_threshold),
                   json.dumps(record.persona_ids), json.dumps(record.metrics), json.dumps(record.lineage),
                   record.gate_reason, record.create_time, record.activate_time, len(chunks)))
        if record.state == pb.MODEL_STATE_ACTIVE:
            self.swap_meta(ACTIVE_VERSION_KEY, lambda _current: str(record.version))

    # ---- training jobs ---------------------------------------------------
    def put_training_job(self, job: TrainingJobRecord) -> None:
        day = _day(job.create_time)
        self._remember_day("jobs", day)
        self._run("INSERT INTO {ks}.jobs_by_day (day, create_time, job_id) VALUES (?, ?, ?)",
                  (day, job.create_time, job.job_id))
        self._run("INSERT INTO {ks}.training_jobs (job_id, body, create_time) VALUES (?, ?, ?)",
                  (job.job_id, json.dumps(job.__dict__), job.create_time))

    def get_training_job(self, job_id: str) -> TrainingJobRecord | None:
        rows = list(self._run("SELECT body FROM {ks}.training_jobs WHERE job_id = ?", (job_id,)))
        return TrainingJobRecord(**json.loads(rows[0].body)) if rows else None

    def list_training_jobs(self, limit: int) -> list[TrainingJobRecord]:
        if limit <= 0:
            return []
        ids = list(dict.fromkeys(self._newest_first("jobs", "jobs_by_day", "job_id", 0, limit)))
        bodies = {row.job_id: TrainingJobRecord(**json.loads(row.body)) for row in self._select_in(
            "SELECT job_id, body FROM {ks}.training_jobs WHERE job_id IN ?", ids)}
        return [bodies[i] for i in ids if i in bodies]

    # ---- event log -------------------------------------------------------
    def append_event(self, type: int, subject: str, attributes: dict[str, str] | None = None) -> EventRecord:
        attributes = event_attributes(attributes)
        origin: uuid.UUID | None = None  # the first copy's id, on every later copy
        for attempt in range(EVENT_APPEND_ATTEMPTS):
            event_id = uuid_from_time(self.clock())  # random node + clock sequence: unique across writers
            bucket = _bucket(event_id)
            if bucket not in self._known_buckets:
                self._run("INSERT INTO {ks}.event_buckets (shard, bucket) VALUES (0, ?)", (bucket,))
                self._known_buckets.add(bucket)
            self._run("INSERT INTO {ks}.events_by_minute (bucket, id, origin, type, subject, attributes) "
                      "VALUES (?, ?, ?, ?, ?, ?)", (bucket, event_id, origin, type, subject, attributes))
            late_by = self.clock() - unix_time_from_uuid1(event_id)
            if late_by < EVENT_LAG_S / 2:
                break
            # Readers may already have read past this id's lag window: append it again, later,
            # naming the first copy, so a reader that got that one skips this one.
            origin = origin or event_id
            log.warning("event append acknowledged after %.1fs; appending it again (attempt %d)", late_by, attempt + 2)
        return EventRecord(_event_key(event_id), type, subject, attributes, unix_time_from_uuid1(event_id),
                           _event_key(origin or event_id))

    def _scan_events(self, after: uuid.UUID | None) -> Iterator[tuple[uuid.UUID, object]]:
        """Events in log order from the lag window before `after` (or from the start)."""
        if after is None:
            lower, buckets_from = None, 0
        else:
            start = unix_time_from_uuid1(after) - EVENT_LAG_S
            lower, buckets_from = min_uuid_from_time(start), int(start // EVENT_BUCKET_S)
        for bucket_row in self._run("SELECT bucket FROM {ks}.event_buckets WHERE shard = 0 AND bucket >= ?",
                                    (buckets_from,), fetch_size=1000):
            if lower is None or bucket_row.bucket > _bucket(lower):
                rows = self._run("SELECT id, origin, type, subject, attributes FROM {ks}.events_by_minute "
                                 "WHERE bucket = ?", (bucket_row.bucket,), fetch_size=2000)
            else:
                rows = self._run("SELECT id, origin, type, subject, attributes FROM {ks}.events_by_minute "
                                 "WHERE bucket = ? AND id >= ?", (bucket_row.bucket, lower), fetch_size=2000)
            for row in rows:
                yield row.id, row

    def read_events(self, after_cursor: str, limit: int = 1000) -> list[EventRecord]:
        after = _event_id(after_cursor) if after_cursor else None
        with self._lock:
            delivered = self._delivered_at.get(after_cursor) if after_cursor else _Delivered.NOTHING
        if delivered is None:  # a cursor from elsewhere: only its own event is known delivered
            delivered = _Delivered(_Batch(frozenset({self._origin_of(after)}), [], [], None), -1)
        rows: list = []
        ids: list[uuid.UUID] = []
        origins: list[uuid.UUID] = []
        in_batch: set[uuid.UUID] = set()
        still_delivered: set[uuid.UUID] = set()
        scanned: list[tuple[uuid.UUID, bool]] = []
        for event_id, row in self._scan_events(after):
            if len(rows) >= limit:
                break
            scanned.append((event_id, row.origin is None))
            origin = row.origin or event_id
            if origin in in_batch:
                continue  # a copy of an event this batch delivers
            if event_id == after or (delivered.ever(origin) if row.origin else delivered.has(origin)):
                still_delivered.add(origin)
                continue
            # New, or late (ordered before the cursor but not delivered with it), or the copy
            # of one this line never got, or - for a cursor from elsewhere - possibly a repeat.
            rows.append(row)
            ids.append(event_id)
            origins.append(origin)
            in_batch.add(origin)
        self._sight(scanned)
        batch = _Batch(frozenset(still_delivered), ids, origins, delivered)
        cursors = self._remember(batch)
        return [EventRecord(cursor, row.type, row.subject, dict(row.attributes or {}), unix_time_from_uuid1(row.id),
                            _event_key(origin)) for cursor, row, origin in zip(cursors, rows, origins)]

    def _origin_of(self, event_id: uuid.UUID) -> uuid.UUID:
        """The origin of a stored event (itself if it is no copy or is gone)."""
        row = self._run("SELECT origin FROM {ks}.events_by_minute WHERE bucket = ? AND id = ?",
                        (_bucket(event_id), event_id)).one()
        return (row.origin if row else None) or event_id

    def _remember(self, batch: _Batch) -> list[str]:
        """The batch's cursors, each remembered with what its line delivered up to it."""
        with self._lock:
            if batch.earlier is not None and batch.ids:
                batch.earlier.prune(batch.newest - COPY_HORIZON_S)
            cursors = [self._remember_cursor(event_id, _Delivered(batch, i)) for i, event_id in enumerate(batch.ids)]
            while len(self._delivered_at) > REMEMBERED_CURSORS:
                self._delivered_at.popitem(last=False)
        return cursors

    def _remember_cursor(self, event_id: uuid.UUID, delivered: _Delivered) -> str:
        """The cursor of this event for this line. Readers in one process often end at the same
        event; when they disagree on what they delivered (one got a late arrival the other has
        yet to get, in the lag window or - for a first copy that landed later than the window,
        whose copy is coming - before it), this line gets a cursor of its own, a variant `~n`,
        so neither's memory hides an event from the other. Called with the lock held."""
        cursor = _event_key(event_id)
        known = self._delivered_at.get(cursor)
        if known is not None and (known.window(event_id) != delivered.window(event_id)
                                  or self._disagree_on_late(known, delivered, event_id)):
            cursor = f"{cursor}~{next(self._variants):x}"
            known = None
        if known is None:
            self._delivered_at[cursor] = delivered
        self._delivered_at.move_to_end(cursor)
        return cursor

    def _disagree_on_late(self, one: _Delivered, other: _Delivered, at: uuid.UUID) -> bool:
        """Whether two lines at one cursor differ on a first copy before its lag window that landed
        later than EVENT_LAG_S after its stamp (only such an event can reach one line and miss another)."""
        window_start, horizon = at.time - int(EVENT_LAG_S * 1e7), at.time - int(COPY_HORIZON_S * 1e7)
        return any(one.ever(origin) != other.ever(origin) for origin in self._late
                   if horizon <= origin.time < window_start)

    def _sight(self, rows: list[tuple[uuid.UUID, bool]]) -> None:
        """Notes when this process first saw each event (id, is a first copy) a scan returned:
        a first copy first seen later than EVENT_LAG_S after its stamp landed late (see
        _disagree_on_late). Forgets sightings older than COPY_HORIZON_S."""
        now = time.time()
        with self._lock:
            for event_id, first_copy in rows:
                if event_id not in self._sighted:
                    self._sighted[event_id] = now
                    # (Older ones: every copy has been written; lines that far behind meet first copy and copies alike.)
                    if first_copy and EVENT_LAG_S < now - unix_time_from_uuid1(event_id) <= COPY_HORIZON_S:
                        self._late.add(event_id)
            while self._sighted and next(iter(self._sighted.values())) < now - COPY_HORIZON_S:
                self._late.discard(self._sighted.popitem(last=False)[0])

    def restore_events(self, events: Sequence[EventRecord]) -> None:
        rows = []
        for event in events:
            digest = hashlib.sha256((event.origin or event.cursor).encode()).digest()
            event_id = uuid_from_time(event.create_time, node=int.from_bytes(digest[:6], "big"),
                                      clock_seq=int.from_bytes(digest[6:8], "big") & 0x3FFF)
            bucket = _bucket(event_id)
            if bucket not in self._known_buckets:
                self._run("INSERT INTO {ks}.event_buckets (shard, bucket) VALUES (0, ?)", (bucket,))
                self._known_buckets.add(bucket)
            rows.append((bucket, event_id, event.type, event.subject, dict(event.attributes)))
        self._execute_all(self._batches("INSERT INTO {ks}.events_by_minute (bucket, id, type, subject, attributes) "
                                        "VALUES (?, ?, ?, ?, ?)", rows, partition=lambda row: row[0]))

    def compact_events(self, before: float) -> int:
        # Whole minute partitions only: one that also holds newer events waits for the next run.
        buckets = [row.bucket for row in self._run(
            "SELECT bucket FROM {ks}.event_buckets WHERE shard = 0 AND bucket < ?", (int(before // EVENT_BUCKET_S),))]
        removed = 0
        for bucket in buckets:
            removed += self._run("SELECT COUNT(*) FROM {ks}.events_by_minute WHERE bucket = ?", (bucket,)).one()[0]
            self._run("DELETE FROM {ks}.events_by_minute WHERE bucket = ?", (bucket,))
            self._run("DELETE FROM {ks}.event_buckets WHERE shard = 0 AND bucket = ?", (bucket,))
            self._known_buckets.discard(bucket)
        return removed

    def latest_cursor(self) -> str:
        newest = list(self._run("SELECT bucket FROM {ks}.event_buckets WHERE shard = 0 ORDER BY bucket DESC LIMIT 1"))
        if not newest:
            return ""
        last = list(self._run("SELECT id FROM {ks}.events_by_minute WHERE bucket = ? ORDER BY id DESC LIMIT 1",
                              (newest[0].bucket,)))
        if not last:
            return ""
        # Everything visible in the window now counts as delivered; later arrivals do not.
        window = {event_id: row.origin or event_id for event_id, row in self._scan_events(last[0].id)}
        self._sight([(event_id, origin == event_id) for event_id, origin in window.items()])
        newest = max({*window, last[0].id}, key=_event_key)
        visible = _Batch(frozenset({*window.values(), window.get(newest, newest)}), [], [], None)
        with self._lock:
            return self._remember_cursor(newest, _Delivered(visible, -1))

    # ---- shared work -------------------------------------------------------
    def iter_shard_embeddings(self, shard: int, shards: int, batch_size: int = 8192
                              ) -> Iterator[tuple[list[str], np.ndarray]]:
        low, high = _token_bounds(shard, shards)
        if high is None:
            rows = self._run("SELECT face_id, embedding FROM {ks}.faces WHERE token(face_id) >= ?", (low,),
                             fetch_size=min(batch_size, 5000), timeout=120)
        else:
            rows = self._run("SELECT face_id, embedding FROM {ks}.faces WHERE token(face_id) >= ? "
                             "AND token(face_id) < ?", (low, high), fetch_size=min(batch_size, 5000), timeout=120)
        yield from _embedding_batches(rows, batch_size)

    def shard_of(self, face_id: str, shards: int) -> int:
        token = Murmur3Token.hash_fn(face_id.encode())  # the partitioner's token of the faces row
        shard = min(shards - 1, (token - MIN_TOKEN) * shards >> 64)
        while shard > 0 and _token_bounds(shard, shards)[0] > token:  # integer rounding of the bounds
            shard -= 1
        while shard < shards - 1 and _token_bounds(shard + 1, shards)[0] <= token:
            shard += 1
        return shard

    def claim_shard(self, job: str, shards: int, owner: str, lease_until: float, now: float,
                    prefer: Sequence[int] = ()) -> ShardRecord | None:
        held = {row.shard: row for row in self._run(
            "SELECT shard, owner, lease_until, done FROM {ks}.work_shards WHERE job = ? AND shard >= 0", (job,))}
        # (a plain read: a stale row only costs a lost compare-and-set below, never a double claim)
        start = zlib.crc32(owner.encode()) % shards  # replicas start at different shards: fewer lost races
        for shard in dict.fromkeys([*prefer, *range(start, shards), *range(start)]):
            row = held.get(shard)
            if row is None:
                claimed = self._cas("INSERT INTO {ks}.work_shards (job, shard, owner, lease_until, faces, done) "
                                    "VALUES (?, ?, ?, ?, 0, false) IF NOT EXISTS", (job, shard, owner, lease_until),
                                    *self._shard_is(job, shard, owner, lease_until))
            elif not row.done and row.lease_until < now:  # its holder stopped renewing: take it over
                claimed = self._cas("UPDATE {ks}.work_shards SET owner = ?, lease_until = ?, faces = 0 "
                                    "WHERE job = ? AND shard = ? IF owner = ? AND lease_until = ?",
                                    (owner, lease_until, job, shard, row.owner, row.lease_until),
                                    *self._shard_is(job, shard, owner, lease_until))
            else:
                continue
            if claimed:
                return ShardRecord(job, shard, owner, lease_until)
        return None

    def _shard_is(self, job: str, shard: int, owner: str, lease_until: float | None = None, done: bool = False
                  ) -> tuple[str, tuple, Callable[[object], bool]]:
        """_cas's settling read of a shard row: held by `owner` (until `lease_until`), done or not."""
        return ("SELECT owner, lease_until, done FROM {ks}.work_shards WHERE job = ? AND shard = ?", (job, shard),
                lambda row: row.owner == owner and row.done == done
                and (lease_until is None or row.lease_until == lease_until))

    def renew_shard(self, job: str, shard: int, owner: str, lease_until: float, faces: int) -> bool:
        return self._cas("UPDATE {ks}.work_shards SET lease_until = ?, faces = ? WHERE job = ? AND shard = ? "
                         "IF owner = ? AND done = false", (lease_until, faces, job, shard, owner),
                         *self._shard_is(job, shard, owner, lease_until))

    def finish_shard(self, job: str, shard: int, owner: str, faces: int) -> bool:
        return self._cas("UPDATE {ks}.work_shards SET done = true, faces = ? WHERE job = ? AND shard = ? "
                         "IF owner = ? AND done = false", (faces, job, shard, owner),
                         *self._shard_is(job, shard, owner, done=True))

    def job_shards(self, job: str) -> list[ShardRecord]:
        rows = self._run("SELECT job, shard, owner, lease_until, faces, done FROM {ks}.work_shards "
                         "WHERE job = ? AND shard >= 0", (job,))
        return [ShardRecord(row.job, row.shard, row.owner, row.lease_until, row.faces, row.done) for row in rows]

    def complete_job(self, job: str) -> bool:
        announcer = uuid.uuid4().hex  # shard -1's owner: tells this caller's announcement from another's
        return self._cas("INSERT INTO {ks}.work_shards (job, shard, owner, lease_until, faces, done) "
                         "VALUES (?, -1, ?, 0, 0, true) IF NOT EXISTS", (job, announcer),
                         *self._shard_is(job, -1, announcer, done=True))

    # ---- meta --------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        rows = list(self._run("SELECT value FROM {ks}.meta WHERE key = ?", (key,)))
        return rows[0].value if rows else None

    def set_meta(self, key: str, value: str) -> None:
        if key == ACTIVE_VERSION_KEY:  # only ever compare-and-set (LWT and plain writes do not mix)
            self.swap_meta(key, lambda _current: value)
            return
        self._run("INSERT INTO {ks}.meta (key, value) VALUES (?, ?)", (key, value))
