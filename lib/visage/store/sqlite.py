"""Embedded store: one SQLite file (WAL) under the data directory. Safe for
several threads and several processes on one machine (the whole local mesh
shares one file); each thread has its own connection."""
from __future__ import annotations

import bisect

import itertools
import json
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from visage.datadir import private_sqlite
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
    unknown_verdict,
    check_prediction_columns,
    event_attributes,
    face_id_bounds,
    translate_errors,
)
from visage.store.records import (
    Erasure,
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

# Append-only list of migrations; index + 1 is the schema version.
MIGRATIONS = [
    """
    CREATE TABLE personas (persona_id TEXT PRIMARY KEY, display_name TEXT NOT NULL,
        create_time REAL NOT NULL, update_time REAL NOT NULL);
    CREATE TABLE images (image_id TEXT PRIMARY KEY, filename TEXT NOT NULL, content_type TEXT NOT NULL,
        width INTEGER NOT NULL, height INTEGER NOT NULL, size_bytes INTEGER NOT NULL,
        face_count INTEGER NOT NULL, status INTEGER NOT NULL, create_time REAL NOT NULL);
    CREATE INDEX images_by_time ON images (create_time DESC);
    CREATE TABLE image_content (image_id TEXT PRIMARY KEY, content BLOB NOT NULL);
    CREATE TABLE faces (face_id TEXT PRIMARY KEY, image_id TEXT NOT NULL, idx INTEGER NOT NULL,
        box TEXT NOT NULL, landmarks TEXT NOT NULL, embedding BLOB NOT NULL, crop_jpeg BLOB NOT NULL,
        create_time REAL NOT NULL);
    CREATE INDEX faces_by_image ON faces (image_id, idx);
    CREATE TABLE labels (face_id TEXT NOT NULL, persona_id TEXT NOT NULL, verdict INTEGER NOT NULL,
        labelled_by TEXT NOT NULL, create_time REAL NOT NULL, PRIMARY KEY (face_id, persona_id));
    CREATE INDEX labels_by_persona ON labels (persona_id, verdict, create_time DESC);
    CREATE TABLE predictions (face_id TEXT PRIMARY KEY, persona_id TEXT NOT NULL,
        confidence REAL NOT NULL, model_version INTEGER NOT NULL, create_time REAL NOT NULL);
    CREATE INDEX predictions_by_persona ON predictions (persona_id, model_version, confidence DESC);
    CREATE TABLE model_versions (version INTEGER PRIMARY KEY, state INTEGER NOT NULL,
        algorithm TEXT NOT NULL, unknown_threshold REAL NOT NULL, persona_ids TEXT NOT NULL,
        metrics TEXT NOT NULL, lineage TEXT NOT NULL, gate_reason TEXT NOT NULL,
        create_time REAL NOT NULL, activate_time REAL NOT NULL);
    CREATE TABLE model_artifacts (version INTEGER PRIMARY KEY, artifact BLOB NOT NULL);
    CREATE TABLE training_jobs (job_id TEXT PRIMARY KEY, body TEXT NOT NULL, create_time REAL NOT NULL);
    CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, type INTEGER NOT NULL,
        subject TEXT NOT NULL, attributes TEXT NOT NULL, create_time REAL NOT NULL);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 2: predictions keyed by face id (WITHOUT ROWID) and indexed by (persona, version) only,
    # so the index rows are (persona, version, face_id). A re-classification writes in face id
    # order, so its index inserts and deletes run along 2 x personas sequential ranges instead of
    # landing on random pages (confidence in the index, or rowids in ingest order, scattered them
    # and made replacing every prediction 3x slower). predictions_of_persona sorts by confidence.
    """
    CREATE TABLE predictions_by_face (face_id TEXT PRIMARY KEY, persona_id TEXT NOT NULL,
        confidence REAL NOT NULL, model_version INTEGER NOT NULL, create_time REAL NOT NULL) WITHOUT ROWID;
    INSERT INTO predictions_by_face SELECT face_id, persona_id, confidence, model_version, create_time
        FROM predictions ORDER BY face_id;
    DROP TABLE predictions;
    ALTER TABLE predictions_by_face RENAME TO predictions;
    CREATE INDEX predictions_by_persona ON predictions (persona_id, model_version);
    """,
    # 3: an erasure finds the events naming an id without reading the whole log; events
    # carry ids only, so the display names PERSONA_RENAMED (type 5) used to carry go.
    """
    CREATE INDEX events_by_subject ON events (subject);
    UPDATE events SET attributes = '{}' WHERE type = 5;
    """,
    # 4: faces and personas a user hid (a stranger in the background) - few rows.
    """
    CREATE TABLE hidden (kind TEXT NOT NULL, item_id TEXT NOT NULL, PRIMARY KEY (kind, item_id));
    """,
    # 5: shards of work shared by replicas (re-classification), claimed with leases.
    """
    CREATE TABLE work_shards (job TEXT NOT NULL, shard INTEGER NOT NULL, owner TEXT NOT NULL,
        lease_until REAL NOT NULL, faces INTEGER NOT NULL, done INTEGER NOT NULL, PRIMARY KEY (job, shard));
    """,
    # 6: the last verdict stands (changed-only re-classification): predictions are indexed by
    # persona alone, and those of versions no longer active, which had no say before, go.
    # Unknown faces get an index of their own, filled here (see UNKNOWN_FACES_OF).
    """
    DELETE FROM predictions WHERE model_version != COALESCE(
        (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'active_model_version' AND value != ''), -1);
    DROP INDEX predictions_by_persona;
    CREATE INDEX predictions_by_persona ON predictions (persona_id);
    CREATE TABLE unknown_faces (face_id TEXT PRIMARY KEY, image_time REAL NOT NULL, image_id TEXT NOT NULL,
        idx INTEGER NOT NULL) WITHOUT ROWID;
    CREATE INDEX unknown_faces_newest_first ON unknown_faces (image_time DESC, image_id, idx);
    INSERT INTO unknown_faces {unknown_faces_of_all}
    """,
    # 7: faces a person drew (IngestService.AddFace) say who ("": found by the detector).
    """
    ALTER TABLE faces ADD COLUMN drawn_by TEXT NOT NULL DEFAULT ''
    """,
]

# The unknown-faces index rows of faces (base.is_unknown as SQL) matching `{where}` on `f`.
UNKNOWN_FACES_OF = (
    "SELECT f.face_id, i.create_time, f.image_id, f.idx FROM faces f JOIN images i ON i.image_id = f.image_id "
    "LEFT JOIN predictions p ON p.face_id = f.face_id WHERE {where} "
    f"AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.face_id = f.face_id AND l.verdict = {pb.VERDICT_BELONGS}) "
    "AND (p.face_id IS NULL OR p.persona_id = '' OR EXISTS (SELECT 1 FROM labels l WHERE l.face_id = f.face_id "
    f"AND l.persona_id = p.persona_id AND l.verdict = {pb.VERDICT_NOT_BELONGS}))")
MIGRATIONS[5] = MIGRATIONS[5].replace("{unknown_faces_of_all}", UNKNOWN_FACES_OF.format(where="1"))

# Updates the row in place (REPLACE deletes the row and its index entry, then inserts both again).
UPSERT_PREDICTION = (
    "INSERT INTO predictions VALUES (?, ?, ?, ?, ?) ON CONFLICT (face_id) DO UPDATE SET "
    "persona_id = excluded.persona_id, confidence = excluded.confidence, "
    "model_version = excluded.model_version, create_time = excluded.create_time")

CURSOR_WIDTH = 20  # zero-padded so cursors compare as strings too
MAX_VARIABLES = 500  # ids per `IN (...)`: stays under SQLite's bound-variable limit
FACE_COLUMNS = "face_id, image_id, idx, box, landmarks, embedding, crop_jpeg, create_time, drawn_by"
INSERT_FACE = f"INSERT OR REPLACE INTO faces ({FACE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"


def _parse_cursor(cursor: str) -> int:
    """A cursor _cursor made; ValueError for anything else (SQLite would overflow on a longer number)."""
    if not (cursor.isascii() and cursor.isdigit() and len(cursor) <= CURSOR_WIDTH and int(cursor) < 2**63):
        raise ValueError(f"not an event cursor: {cursor[:40]!r}")
    return int(cursor)


_HIDDEN_TABLES = {"face": ("faces", "face_id"), "persona": ("personas", "persona_id")}


def _face_row(face: FaceRecord) -> tuple:
    """A faces row, in FACE_COLUMNS order."""
    return (face.face_id, face.image_id, face.index, json.dumps(list(face.box)), json.dumps(face.landmarks),
            embedding_to_bytes(face.embedding), face.crop_jpeg, face.create_time, face.drawn_by)


def _cursor(seq: int) -> str:
    return str(seq).zfill(CURSOR_WIDTH)


def _store_error(error: Exception) -> StoreError | None:
    """sqlite3's errors as the store's own (see translate_errors)."""
    if isinstance(error, sqlite3.IntegrityError):
        return StoreConflict(f"a concurrent write conflicts: {error}")
    if isinstance(error, sqlite3.OperationalError):  # locked, busy, disk full, cannot open
        return StoreUnavailable(f"SQLite: {error}")
    if isinstance(error, sqlite3.DatabaseError):  # "database disk image is malformed", ...
        return StoreCorrupt(f"SQLite: {error}")
    return None


@translate_errors(_store_error)
class SqliteStore(Store):
    def __init__(self, path: str | Path):
        self.path = Path(path)
        private_sqlite(self.path)  # directory 0700, database 0600 (its -wal and -shm take that mode)
        self._local = threading.local()
        self._all_connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # This process's writers queue here: SQLite's busy handler would have a waiting thread
        # sleep and retry (up to 100 ms a try), starving it while another thread writes back to
        # back (a re-classification's shard claims behind its batch writes).
        self._write_turn = threading.Lock()

    # ---- plumbing --------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes in WAL mode
            conn.execute("PRAGMA foreign_keys=OFF")
            conn.execute("PRAGMA secure_delete=ON")  # deleted content is overwritten with zeros (erasure)
            self._local.conn = conn
            with self._lock:
                self._all_connections.append(conn)
        return conn

    @contextmanager
    def _tx(self):
        """A write transaction that takes the write lock up front (no upgrade deadlocks).
        Reentrant: inside atomic() (a domain rule), every write joins the one transaction."""
        conn = self._conn()
        if conn.in_transaction:
            yield conn
            return
        with self._write_turn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def atomic(self):
        with self._tx():
            yield

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        return self._conn().execute(sql, args).fetchall()

    def _query_in(self, sql: str, ids: Iterable[str], args: tuple = ()) -> list[tuple]:
        """Rows of `sql`, whose `{marks}` is an `IN (...)` list, for many ids (then `args`)."""
        ids = list(dict.fromkeys(ids))
        rows: list[tuple] = []
        for start in range(0, len(ids), MAX_VARIABLES):
            chunk = ids[start:start + MAX_VARIABLES]
            rows += self._query(sql.format(marks=",".join("?" * len(chunk))), (*chunk, *args))
        return rows

    def migrate(self) -> None:
        with self._tx() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            current = row[0] or 0
            for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
                for statement in filter(str.strip, script.split(";")):
                    conn.execute(statement)
                conn.execute("INSERT INTO schema_version VALUES (?)", (version,))

    def checkpoint(self) -> None:
        """Copies the WAL into the database and truncates it: with secure_delete, what an
        erasure deleted is then zeros in both files, not old frames in the WAL (issue 25)."""
        self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def delete_image(self, image_id: str) -> Erasure:
        erasure = super().delete_image(image_id)
        self.checkpoint()
        return erasure

    def delete_face(self, face_id: str) -> Erasure:
        erasure = super().delete_face(face_id)
        self.checkpoint()
        return erasure

    def delete_persona(self, persona_id: str, erase_faces: bool = False) -> Erasure:
        erasure = super().delete_persona(persona_id, erase_faces)
        self.checkpoint()
        return erasure

    def close(self) -> None:
        with self._lock:
            for conn in self._all_connections:
                conn.close()
            self._all_connections.clear()
        self._local = threading.local()

    @staticmethod
    def _append(conn: sqlite3.Connection, type: int, subject: str, attributes: dict | None = None) -> EventRecord:
        attributes = event_attributes(attributes)
        created = now()
        cur = conn.execute(
            "INSERT INTO events (type, subject, attributes, create_time) VALUES (?, ?, ?, ?)",
            (type, subject, json.dumps(attributes), created),
        )
        return EventRecord(_cursor(cur.lastrowid), type, subject, attributes, created)

    # ---- personas --------------------------------------------------------
    def create_persona(self, display_name: str) -> PersonaRecord:
        record = PersonaRecord(uuid.uuid4().hex[:16], display_name)
        with self._tx() as conn:
            conn.execute("INSERT INTO personas VALUES (?, ?, ?, ?)",
                         (record.persona_id, record.display_name, record.create_time, record.update_time))
            self._append(conn, pb.EVENT_TYPE_PERSONA_CREATED, record.persona_id)
        return record

    def get_persona(self, persona_id: str) -> PersonaRecord | None:
        rows = self._query("SELECT * FROM personas WHERE persona_id = ?", (persona_id,))
        return PersonaRecord(*rows[0]) if rows else None

    def list_personas(self) -> list[PersonaRecord]:
        rows = self._query("SELECT * FROM personas ORDER BY lower(display_name), persona_id")
        return [PersonaRecord(*row) for row in rows]

    def rename_persona(self, persona_id: str, display_name: str) -> PersonaRecord:
        with self._tx() as conn:
            cur = conn.execute("UPDATE personas SET display_name = ?, update_time = ? WHERE persona_id = ?",
                               (display_name, now(), persona_id))
            if cur.rowcount == 0:
                raise NotFound(f"persona {persona_id!r} not found")
            self._append(conn, pb.EVENT_TYPE_PERSONA_RENAMED, persona_id)  # ids only: no name in the log
        return self.get_persona(persona_id)

    def drop_persona_row(self, persona_id: str) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM personas WHERE persona_id = ?", (persona_id,))

    # ---- restore primitives (visage.store.archive) ------------------------------
    def restore_persona(self, persona: PersonaRecord) -> None:
        with self._tx() as conn:
            conn.execute("INSERT OR REPLACE INTO personas VALUES (?, ?, ?, ?)",
                         (persona.persona_id, persona.display_name, persona.create_time, persona.update_time))

    def restore_image(self, image: ImageRecord, content: bytes, faces: list[FaceRecord]) -> None:
        with self._tx() as conn:
            conn.executemany(INSERT_FACE, [_face_row(f) for f in faces])
            conn.execute("INSERT OR REPLACE INTO image_content VALUES (?, ?)", (image.image_id, content))
            conn.execute("INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (image.image_id, image.filename, image.content_type, image.width, image.height,
                          image.size_bytes, image.face_count, image.status, image.create_time))
            self._sync_unknown(conn, [f.face_id for f in faces])

    def restore_hidden(self, kind: str, item_ids: Sequence[str]) -> None:
        with self._tx() as conn:
            conn.executemany("INSERT OR IGNORE INTO hidden VALUES (?, ?)", [(kind, i) for i in item_ids])

    # ---- erasure primitives (the cascade: visage.store.domain) ----------------
    @staticmethod
    def _execute_in(conn: sqlite3.Connection, sql: str, ids: Sequence[str]) -> list[tuple]:
        """`sql` (with `{marks}` for an `IN (...)` list) for many ids, MAX_VARIABLES at a time."""
        ids = list(ids)
        rows: list[tuple] = []
        for start in range(0, len(ids), MAX_VARIABLES):
            chunk = ids[start:start + MAX_VARIABLES]
            rows += conn.execute(sql.format(marks=",".join("?" * len(chunk))), chunk).fetchall()
        return rows

    def _delete_in(self, sql: str, ids: Sequence[str]) -> None:
        with self._tx() as conn:
            self._execute_in(conn, sql, ids)

    def _sync_unknown(self, conn: sqlite3.Connection, face_ids: Iterable[str]) -> None:
        """Re-decides these faces' rows of the unknown-faces index from what the
        transaction now holds (the same transaction as the change: never stale)."""
        face_ids = list(dict.fromkeys(face_ids))
        self._execute_in(conn, "DELETE FROM unknown_faces WHERE face_id IN ({marks})", face_ids)
        self._execute_in(conn, "INSERT INTO unknown_faces " + UNKNOWN_FACES_OF.format(where="f.face_id IN ({marks})"),
                         face_ids)

    def existing_faces(self, face_ids: Iterable[str]) -> set[str]:
        return {row[0] for row in self._query_in("SELECT face_id FROM faces WHERE face_id IN ({marks})", face_ids)}

    def face_ids_of_images(self, image_ids: Sequence[str]) -> list[str]:
        return [row[0] for row in self._query_in("SELECT face_id FROM faces WHERE image_id IN ({marks}) "
                                                 "ORDER BY image_id, idx", image_ids)]

    def recount_faces(self, image_id: str, erased: Sequence[str]) -> None:
        with self._tx() as conn:
            erased = set(erased)
            kept = [row[0] for row in conn.execute("SELECT face_id FROM faces WHERE image_id = ?", (image_id,))
                    if row[0] not in erased]
            conn.execute("UPDATE images SET face_count = ? WHERE image_id = ?", (len(kept), image_id))
            if kept:
                conn.execute("UPDATE images SET status = ? WHERE image_id = ?", (pb.IMAGE_STATUS_FACES_FOUND, image_id))

    def put_face(self, face: FaceRecord) -> None:
        with self._tx() as conn:
            conn.execute(INSERT_FACE, _face_row(face))
            self._sync_unknown(conn, [face.face_id])

    def drop_face_details(self, face_ids: Sequence[str]) -> None:
        pass  # a face's crop and place live in its row here (drop_face_rows)

    def drop_face_rows(self, face_ids: Sequence[str]) -> None:
        self._delete_in("DELETE FROM faces WHERE face_id IN ({marks})", face_ids)

    def drop_image_content(self, image_ids: Sequence[str]) -> None:
        self._delete_in("DELETE FROM image_content WHERE image_id IN ({marks})", image_ids)

    def drop_image_rows(self, image_ids: Sequence[str]) -> None:
        self._delete_in("DELETE FROM images WHERE image_id IN ({marks})", image_ids)

    def drop_hidden(self, kind: str, item_ids: Sequence[str]) -> None:
        with self._tx() as conn:
            conn.executemany("DELETE FROM hidden WHERE kind = ? AND item_id = ?", [(kind, i) for i in item_ids])

    def personas_labelling(self, face_ids: Sequence[str]) -> set[str]:
        return {row[0] for row in self._query_in("SELECT persona_id FROM labels WHERE face_id IN ({marks})", face_ids)}

    def drop_labels_of_faces(self, face_ids: Sequence[str]) -> None:
        self._delete_in("DELETE FROM labels WHERE face_id IN ({marks})", face_ids)

    def drop_labels_of_persona(self, persona_id: str) -> None:
        with self._tx() as conn:
            labelled = [row[0] for row in conn.execute("SELECT face_id FROM labels WHERE persona_id = ?",
                                                       (persona_id,))]
            conn.execute("DELETE FROM labels WHERE persona_id = ?", (persona_id,))
            self._sync_unknown(conn, labelled)

    def drop_predictions_of_faces(self, face_ids: Sequence[str]) -> None:
        with self._tx() as conn:
            for table in ("predictions", "unknown_faces"):
                self._execute_in(conn, f"DELETE FROM {table} WHERE face_id IN ({{marks}})", face_ids)

    def drop_verdicts_naming(self, persona_ids: Sequence[str]) -> None:
        with self._tx() as conn:
            face_ids = [row[0] for row in self._execute_in(
                conn, "SELECT face_id FROM predictions WHERE persona_id IN ({marks})", persona_ids)]
            self._execute_in(conn, "DELETE FROM predictions WHERE face_id IN ({marks})", face_ids)
            self._sync_unknown(conn, face_ids)

    def forget_events(self, subjects: set[str], persona_ids: set[str] = frozenset(), since: float = 0.0) -> None:
        with self._tx() as conn:
            self._execute_in(conn, "DELETE FROM events WHERE subject IN ({marks})", sorted(subjects))
            self._execute_in(conn, "DELETE FROM events WHERE json_extract(attributes, '$.persona_id') IN ({marks})",
                             sorted(persona_ids))

    @staticmethod
    def _withdraw(conn: sqlite3.Connection, versions: list[ModelVersionRecord]) -> list[int]:
        numbers = [v.version for v in versions]
        for version in numbers:
            conn.execute("UPDATE model_versions SET state = ?, gate_reason = ? WHERE version = ?",
                         (pb.MODEL_STATE_WITHDRAWN, WITHDRAWN_REASON, version))
            conn.execute("DELETE FROM model_artifacts WHERE version = ?", (version,))
            conn.execute("UPDATE meta SET value = '' WHERE key = ? AND value = ?", (ACTIVE_VERSION_KEY, str(version)))
        return numbers

    def withdraw_model_versions(self, versions: list[ModelVersionRecord]) -> list[int]:
        with self._tx() as conn:
            return self._withdraw(conn, versions)

    # ---- images and faces -----------------------------------------------
    def put_image(self, image: ImageRecord, content: bytes, faces: list[FaceRecord]) -> bool:
        with self._tx() as conn:
            exists = conn.execute("SELECT 1 FROM images WHERE image_id = ?", (image.image_id,)).fetchone()
            if exists:
                return False
            conn.executemany(INSERT_FACE, [_face_row(f) for f in faces])
            conn.execute("INSERT INTO image_content VALUES (?, ?)", (image.image_id, content))
            conn.execute(
                "INSERT INTO images VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (image.image_id, image.filename, image.content_type, image.width, image.height,
                 image.size_bytes, image.face_count, image.status, image.create_time),
            )
            self._sync_unknown(conn, [f.face_id for f in faces])
            self._append(conn, pb.EVENT_TYPE_IMAGE_INGESTED, image.image_id, {"face_count": image.face_count})
        return True

    def get_image(self, image_id: str) -> ImageRecord | None:
        rows = self._query("SELECT * FROM images WHERE image_id = ?", (image_id,))
        return ImageRecord(*rows[0]) if rows else None

    def get_image_content(self, image_id: str) -> bytes | None:
        rows = self._query("SELECT content FROM image_content WHERE image_id = ?", (image_id,))
        return bytes(rows[0][0]) if rows else None

    def list_images(self, offset: int, limit: int) -> list[ImageRecord]:
        rows = self._query("SELECT * FROM images ORDER BY create_time DESC, image_id LIMIT ? OFFSET ?",
                           (limit, offset))
        return [ImageRecord(*row) for row in rows]

    def count_images(self) -> int:
        return self._query("SELECT COUNT(*) FROM images")[0][0]

    @staticmethod
    def _face(row: tuple) -> FaceRecord:
        face_id, image_id, idx, box, landmarks, embedding, crop, created, drawn_by = row
        return FaceRecord(face_id, image_id, idx, tuple(json.loads(box)),
                          [tuple(p) for p in json.loads(landmarks)],
                          embedding_from_bytes(embedding), bytes(crop), created, drawn_by)

    def get_face(self, face_id: str) -> FaceRecord | None:
        faces = self.get_faces([face_id])
        return faces[0] if faces else None

    def get_faces(self, face_ids: Iterable[str]) -> list[FaceRecord]:
        face_ids = list(face_ids)
        found = {row[0]: self._face(row) for row in self._query_in(
            f"SELECT {FACE_COLUMNS} FROM faces WHERE face_id IN ({{marks}})", face_ids)}
        return [found[f] for f in face_ids if f in found]

    def faces_of_images(self, image_ids: Iterable[str]) -> dict[str, list[FaceRecord]]:
        image_ids = list(image_ids)
        faces: dict[str, list[FaceRecord]] = {image_id: [] for image_id in image_ids}
        rows = self._query_in("SELECT face_id, image_id, idx, box, landmarks, embedding, x'', create_time, drawn_by "
                              "FROM faces WHERE image_id IN ({marks}) ORDER BY image_id, idx", image_ids)
        for row in rows:
            faces[row[1]].append(self._face(row))
        return faces

    def faces_of_image(self, image_id: str) -> list[FaceRecord]:
        rows = self._query(f"SELECT {FACE_COLUMNS} FROM faces WHERE image_id = ? ORDER BY idx", (image_id,))
        return [self._face(row) for row in rows]

    def count_faces(self) -> int:
        return self._query("SELECT COUNT(*) FROM faces")[0][0]

    def iter_embeddings(self, batch_size: int = 8192) -> Iterator[tuple[list[str], np.ndarray]]:
        cursor = self._conn().execute("SELECT face_id, embedding FROM faces ORDER BY face_id")
        while rows := cursor.fetchmany(batch_size):
            ids = [row[0] for row in rows]
            matrix = np.frombuffer(b"".join(row[1] for row in rows), dtype="<f4").reshape(len(rows), -1)
            yield ids, matrix

    # ---- labels ----------------------------------------------------------
    def write_label(self, label: LabelRecord) -> None:
        with self._tx() as conn:
            if label.verdict == pb.VERDICT_BELONGS:
                conn.execute("DELETE FROM labels WHERE face_id = ? AND verdict = ? AND persona_id != ?",
                             (label.face_id, pb.VERDICT_BELONGS, label.persona_id))
            conn.execute("INSERT OR REPLACE INTO labels VALUES (?, ?, ?, ?, ?)",
                         (label.face_id, label.persona_id, label.verdict, label.labelled_by, label.create_time))
            self._sync_unknown(conn, [label.face_id])

    def remove_label(self, face_id: str, persona_id: str) -> bool:
        with self._tx() as conn:
            cur = conn.execute("DELETE FROM labels WHERE face_id = ? AND persona_id = ?", (face_id, persona_id))
            self._sync_unknown(conn, [face_id])
            return cur.rowcount > 0

    def set_hidden(self, kind: str, item_id: str, hidden: bool) -> None:
        table, column = _HIDDEN_TABLES[kind]
        with self._tx() as conn:
            if not conn.execute(f"SELECT 1 FROM {table} WHERE {column} = ?", (item_id,)).fetchone():
                raise NotFound(f"{kind} {item_id!r} not found")
            if hidden:
                cur = conn.execute("INSERT OR IGNORE INTO hidden VALUES (?, ?)", (kind, item_id))
            else:
                cur = conn.execute("DELETE FROM hidden WHERE kind = ? AND item_id = ?", (kind, item_id))
            if cur.rowcount:
                self._append(conn, pb.EVENT_TYPE_HIDDEN_CHANGED, item_id, {"kind": kind, "hidden": str(hidden).lower()})

    def hidden_ids(self, kind: str) -> set[str]:
        return {row[0] for row in self._query("SELECT item_id FROM hidden WHERE kind = ?", (kind,))}

    def labels_of_face(self, face_id: str) -> list[LabelRecord]:
        rows = self._query("SELECT * FROM labels WHERE face_id = ? ORDER BY create_time DESC", (face_id,))
        return [LabelRecord(*row) for row in rows]

    def labels_of_faces(self, face_ids: Iterable[str]) -> dict[str, list[LabelRecord]]:
        labels: dict[str, list[LabelRecord]] = {face_id: [] for face_id in face_ids}
        for row in self._query_in("SELECT * FROM labels WHERE face_id IN ({marks}) ORDER BY create_time DESC", labels):
            labels[row[0]].append(LabelRecord(*row))
        return labels

    def labels_of_persona(self, persona_id: str, verdict: int) -> list[LabelRecord]:
        rows = self._query("SELECT * FROM labels WHERE persona_id = ? AND verdict = ? ORDER BY create_time DESC",
                           (persona_id, verdict))
        return [LabelRecord(*row) for row in rows]

    def count_labels(self, persona_ids: Iterable[str], verdict: int) -> dict[str, int]:
        counts = dict.fromkeys(persona_ids, 0)
        counts.update(self._query_in("SELECT persona_id, COUNT(*) FROM labels WHERE persona_id IN ({marks}) "
                                     "AND verdict = ? GROUP BY persona_id", counts, (verdict,)))
        return counts

    def iter_labels(self) -> Iterator[LabelRecord]:
        cursor = self._conn().execute("SELECT * FROM labels ORDER BY face_id, persona_id")
        while rows := cursor.fetchmany(10000):
            yield from (LabelRecord(*row) for row in rows)

    # ---- predictions -----------------------------------------------------
    def put_predictions(self, predictions: list[PredictionRecord]) -> None:
        latest = {p.face_id: p for p in predictions}  # the last one of a face wins
        with self._tx() as conn:
            previous = self._stored_verdicts(conn, latest)
            conn.executemany(UPSERT_PREDICTION, [(p.face_id, p.persona_id, p.confidence, p.model_version,
                                                  p.create_time) for p in latest.values()])
            self._sync_changed_verdicts(conn, previous, {f: p.persona_id for f, p in latest.items()})

    def put_prediction_columns(self, face_ids: Sequence[str], persona_ids: Sequence[str],
                               confidences: Sequence[float] | np.ndarray, model_version: int,
                               create_time: float, changed_only: bool = False) -> int:
        check_prediction_columns(face_ids, persona_ids, confidences)
        confidences = np.asarray(confidences).tolist()
        with self._tx() as conn:  # read and write in one transaction: a concurrent write cannot slip between
            previous = self._stored_verdicts(conn, face_ids)
            rows = (changed_rows(previous, face_ids, persona_ids, confidences) if changed_only
                    else {face_id: i for i, face_id in enumerate(face_ids)}.values())
            conn.executemany(UPSERT_PREDICTION, [(face_ids[i], persona_ids[i], confidences[i], model_version,
                                                  create_time) for i in rows])
            written = {face_ids[i]: persona_ids[i] for i in rows}
            self._sync_changed_verdicts(conn, previous, written)
        return len(written)

    def _stored_verdicts(self, conn: sqlite3.Connection, face_ids: Iterable[str]) -> dict[str, tuple[str, float]]:
        """The stored (persona_id, confidence) of these faces (changed_rows' `previous`)."""
        return {row[0]: row[1:] for row in self._rows_of_faces(conn, "predictions", face_ids,
                                                                 "face_id, persona_id, confidence")}

    def _rows_of_faces(self, conn: sqlite3.Connection, table: str, face_ids: Iterable[str],
                       columns: str = "*") -> list[tuple]:
        """The rows of `table` (keyed by face id first) of these faces. Many ids (a re-classification's
        batch: a run of one shard's face ids) are read as one range of the table, in page order,
        instead of a lookup each; a range that holds many other rows (an incremental pass's due
        faces) is read up to twice the ids' count, and the rest by id."""
        ids = dict.fromkeys(face_ids)
        by_id = f"SELECT {columns} FROM {table} WHERE face_id IN ({{marks}})"
        if len(ids) <= MAX_VARIABLES:
            return self._execute_in(conn, by_id, list(ids))
        limit = 2 * len(ids)
        rows = conn.execute(f"SELECT {columns} FROM {table} WHERE face_id BETWEEN ? AND ? ORDER BY face_id LIMIT ?",
                            (min(ids), max(ids), limit)).fetchall()
        if len(rows) == limit:  # the last face's rows may be cut short: it is read again by id
            last = rows[-1][0]
            rows = [row for row in rows if row[0] != last] + self._execute_in(
                conn, by_id, [face_id for face_id in ids if face_id >= last])
        return [row for row in rows if row[0] in ids]

    def _sync_changed_verdicts(self, conn: sqlite3.Connection, previous: dict[str, tuple[str, float]],
                               written: dict[str, str]) -> None:
        """The unknown-faces rows of faces whose verdict moved across is_unknown (the index was
        right before this transaction; most verdicts stay on their side, so they cost no write)."""
        labels: dict[str, list[LabelRecord]] = {}
        for row in self._rows_of_faces(conn, "labels", written):
            labels.setdefault(row[0], []).append(LabelRecord(*row))
        now_known, now_unknown = [], []
        for face_id, persona_id in written.items():
            stored = previous.get(face_id)
            face_labels = labels.get(face_id, ())
            after = unknown_verdict(face_labels, persona_id)
            if unknown_verdict(face_labels, stored[0] if stored else None) != after:
                (now_unknown if after else now_known).append(face_id)
        self._execute_in(conn, "DELETE FROM unknown_faces WHERE face_id IN ({marks})", now_known)
        self._sync_unknown(conn, now_unknown)

    def get_prediction(self, face_id: str) -> PredictionRecord | None:
        rows = self._query("SELECT * FROM predictions WHERE face_id = ?", (face_id,))
        return PredictionRecord(*rows[0]) if rows else None

    def get_predictions(self, face_ids: Iterable[str]) -> dict[str, PredictionRecord]:
        rows = self._query_in("SELECT * FROM predictions WHERE face_id IN ({marks})", face_ids)
        return {row[0]: PredictionRecord(*row) for row in rows}

    def count_predictions(self, persona_ids: Iterable[str]) -> dict[str, int]:
        counts = dict.fromkeys(persona_ids, 0)
        counts.update(self._query_in("SELECT persona_id, COUNT(*) FROM predictions WHERE persona_id IN ({marks}) "
                                     "AND persona_id != '' GROUP BY persona_id", counts))
        return counts

    def predictions_of_persona(self, persona_id: str) -> list[PredictionRecord]:
        rows = self._query("SELECT * FROM predictions WHERE persona_id = ? AND persona_id != '' "
                           "ORDER BY confidence DESC", (persona_id,))
        return [PredictionRecord(*row) for row in rows]

    # ---- unknown faces -----------------------------------------------------
    def list_unknown_faces(self, after: UnknownFaceKey | None, limit: int) -> list[UnknownFaceKey]:
        if limit <= 0:
            return []
        if after is None:
            rows = self._query("SELECT image_time, image_id, idx, face_id FROM unknown_faces "
                               "ORDER BY image_time DESC, image_id, idx LIMIT ?", (limit,))
        else:  # a range of the index from the cursor on (the few rows at its own time filtered)
            rows = self._query(
                "SELECT image_time, image_id, idx, face_id FROM unknown_faces WHERE image_time <= ? "
                "AND NOT (image_time = ? AND (image_id < ? OR (image_id = ? AND idx <= ?))) "
                "ORDER BY image_time DESC, image_id, idx LIMIT ?",
                (after.image_time, after.image_time, after.image_id, after.image_id, after.index, limit))
        return [UnknownFaceKey(*row) for row in rows]

    def iter_predictions(self) -> Iterator[PredictionRecord]:
        cursor = self._conn().execute("SELECT * FROM predictions ORDER BY face_id")
        while rows := cursor.fetchmany(10000):
            yield from (PredictionRecord(*row) for row in rows)

    # ---- model versions --------------------------------------------------
    @staticmethod
    def _version(row: tuple) -> ModelVersionRecord:
        (version, state, algorithm, threshold, persona_ids, metrics, lineage, gate_reason,
         created, activated) = row
        return ModelVersionRecord(version, state, algorithm, threshold, json.loads(persona_ids),
                                  json.loads(metrics), json.loads(lineage), gate_reason, created, activated)

    def put_model_version(self, record: ModelVersionRecord, artifact: bytes) -> ModelVersionRecord:
        with self._tx() as conn:
            if not record.version:
                record.version = (conn.execute("SELECT MAX(version) FROM model_versions").fetchone()[0] or 0) + 1
            conn.execute("INSERT OR REPLACE INTO model_artifacts VALUES (?, ?)", (record.version, artifact))
            conn.execute(
                "INSERT OR REPLACE INTO model_versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.version, record.state, record.algorithm, record.unknown_threshold,
                 json.dumps(record.persona_ids), json.dumps(record.metrics), json.dumps(record.lineage),
                 record.gate_reason, record.create_time, record.activate_time),
            )
        return record

    def update_model_version(self, record: ModelVersionRecord) -> None:
        with self._tx() as conn:
            conn.execute(
                "UPDATE model_versions SET state = ?, gate_reason = ?, metrics = ?, activate_time = ? "
                "WHERE version = ?",
                (record.state, record.gate_reason, json.dumps(record.metrics), record.activate_time,
                 record.version))

    def record_gate_decision(self, version: int, state: int, gate_reason: str) -> bool:
        with self._tx() as conn:
            return conn.execute("UPDATE model_versions SET state = ?, gate_reason = ? WHERE version = ? AND state != ?",
                                (state, gate_reason, version, pb.MODEL_STATE_WITHDRAWN)).rowcount > 0

    def get_model_version(self, version: int) -> ModelVersionRecord | None:
        rows = self._query("SELECT * FROM model_versions WHERE version = ?", (version,))
        return self._version(rows[0]) if rows else None

    def get_model_artifact(self, version: int) -> bytes | None:
        rows = self._query("SELECT artifact FROM model_artifacts WHERE version = ?", (version,))
        return bytes(rows[0][0]) if rows else None

    def delete_model_artifact(self, version: int) -> bool:
        with self._tx() as conn:
            return conn.execute("DELETE FROM model_artifacts WHERE version = ?", (version,)).rowcount > 0

    def list_model_versions(self) -> list[ModelVersionRecord]:
        return [self._version(row) for row in self._query("SELECT * FROM model_versions ORDER BY version DESC")]

    def activate_model_version(self, version: int, gate_reason: str | None = None) -> ModelVersionRecord:
        record = self.get_model_version(version)
        if record is None:
            raise NotFound(f"model version {version} not found")
        self.check_activatable(record)
        with self._tx() as conn:
            state = conn.execute("SELECT state FROM model_versions WHERE version = ?", (version,)).fetchone()
            if state and state[0] == pb.MODEL_STATE_WITHDRAWN:  # an erasure withdrew it meanwhile
                raise Withdrawn(f"model version {version} was {WITHDRAWN_REASON}; it cannot be activated")
            conn.execute("UPDATE model_versions SET state = ? WHERE state = ? AND version != ?",
                         (pb.MODEL_STATE_RETIRED, pb.MODEL_STATE_ACTIVE, version))
            conn.execute("UPDATE model_versions SET state = ?, activate_time = ?, gate_reason = COALESCE(?, gate_reason) "
                         "WHERE version = ?", (pb.MODEL_STATE_ACTIVE, now(), gate_reason, version))
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (ACTIVE_VERSION_KEY, str(version)))
            self._append(conn, pb.EVENT_TYPE_MODEL_VERSION_ACTIVATED, str(version))
        return self.get_model_version(version)

    def active_model_version(self) -> ModelVersionRecord | None:
        value = self.get_meta(ACTIVE_VERSION_KEY)
        return self.get_model_version(int(value)) if value else None

    def restore_model_version(self, record: ModelVersionRecord, artifact: bytes | None) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM model_artifacts WHERE version = ?", (record.version,))
            if artifact is not None:
                conn.execute("INSERT INTO model_artifacts VALUES (?, ?)", (record.version, artifact))
            conn.execute(
                "INSERT OR REPLACE INTO model_versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.version, record.state, record.algorithm, record.unknown_threshold,
                 json.dumps(record.persona_ids), json.dumps(record.metrics), json.dumps(record.lineage),
                 record.gate_reason, record.create_time, record.activate_time))
            if record.state == pb.MODEL_STATE_ACTIVE:
                conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (ACTIVE_VERSION_KEY, str(record.version)))

    # ---- training jobs ---------------------------------------------------
    def put_training_job(self, job: TrainingJobRecord) -> None:
        with self._tx() as conn:
            conn.execute("INSERT OR REPLACE INTO training_jobs VALUES (?, ?, ?)",
                         (job.job_id, json.dumps(job.__dict__), job.create_time))

    def get_training_job(self, job_id: str) -> TrainingJobRecord | None:
        rows = self._query("SELECT body FROM training_jobs WHERE job_id = ?", (job_id,))
        return TrainingJobRecord(**json.loads(rows[0][0])) if rows else None

    def list_training_jobs(self, limit: int) -> list[TrainingJobRecord]:
        rows = self._query("SELECT body FROM training_jobs ORDER BY create_time DESC LIMIT ?", (limit,))
        return [TrainingJobRecord(**json.loads(row[0])) for row in rows]

    # ---- event log -------------------------------------------------------
    def append_event(self, type: int, subject: str, attributes: dict[str, str] | None = None) -> EventRecord:
        with self._tx() as conn:
            return self._append(conn, type, subject, attributes)

    def read_events(self, after_cursor: str, limit: int = 1000) -> list[EventRecord]:
        after = _parse_cursor(after_cursor) if after_cursor else 0
        rows = self._query("SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after, limit))
        return [EventRecord(_cursor(seq), type, subject, json.loads(attrs), created)
                for seq, type, subject, attrs, created in rows]

    def latest_cursor(self) -> str:
        seq = self._query("SELECT MAX(seq) FROM events")[0][0]
        return _cursor(seq) if seq else ""

    def restore_events(self, events: Sequence[EventRecord]) -> None:
        with self._tx() as conn:
            conn.executemany("INSERT INTO events (type, subject, attributes, create_time) VALUES (?, ?, ?, ?)",
                             [(e.type, e.subject, json.dumps(e.attributes), e.create_time) for e in events])

    def compact_events(self, before: float) -> int:
        with self._tx() as conn:  # AUTOINCREMENT: removed sequence numbers are never reused
            return conn.execute("DELETE FROM events WHERE create_time < ?", (before,)).rowcount

    # ---- shared work -------------------------------------------------------
    def iter_shard_embeddings(self, shard: int, shards: int, batch_size: int = 8192
                              ) -> Iterator[tuple[list[str], np.ndarray]]:
        low, high = face_id_bounds(shard, shards)
        where, args = ("face_id >= ?", [low]) if low else ("1", [])
        if high is not None:
            where, args = f"{where} AND face_id < ?", [*args, high]
        cursor = self._conn().execute(f"SELECT face_id, embedding FROM faces WHERE {where} ORDER BY face_id", args)
        while rows := cursor.fetchmany(batch_size):
            ids = [row[0] for row in rows]
            yield ids, np.frombuffer(b"".join(row[1] for row in rows), dtype="<f4").reshape(len(rows), -1)

    def shard_of(self, face_id: str, shards: int) -> int:
        return bisect.bisect_right([face_id_bounds(shard, shards)[0] for shard in range(1, shards)], face_id)

    def claim_shard(self, job: str, shards: int, owner: str, lease_until: float, now: float,
                    prefer: Sequence[int] = ()) -> ShardRecord | None:
        with self._tx() as conn:
            held = {shard: (until, done) for shard, until, done in conn.execute(
                "SELECT shard, lease_until, done FROM work_shards WHERE job = ? AND shard >= 0", (job,))}
            for shard in dict.fromkeys([*prefer, *range(shards)]):
                until, done = held.get(shard, (None, False))
                if until is None or (not done and until < now):
                    conn.execute("INSERT OR REPLACE INTO work_shards VALUES (?, ?, ?, ?, ?, ?)",
                                 (job, shard, owner, lease_until, 0, False))
                    return ShardRecord(job, shard, owner, lease_until)
        return None

    def renew_shard(self, job: str, shard: int, owner: str, lease_until: float, faces: int) -> bool:
        with self._tx() as conn:
            return conn.execute("UPDATE work_shards SET lease_until = ?, faces = ? WHERE job = ? AND shard = ? "
                                "AND owner = ? AND NOT done", (lease_until, faces, job, shard, owner)).rowcount == 1

    def finish_shard(self, job: str, shard: int, owner: str, faces: int) -> bool:
        with self._tx() as conn:
            return conn.execute("UPDATE work_shards SET done = 1, faces = ? WHERE job = ? AND shard = ? "
                                "AND owner = ? AND NOT done", (faces, job, shard, owner)).rowcount == 1

    def job_shards(self, job: str) -> list[ShardRecord]:
        rows = self._query("SELECT job, shard, owner, lease_until, faces, done FROM work_shards "
                           "WHERE job = ? AND shard >= 0 ORDER BY shard", (job,))
        return [ShardRecord(job, shard, owner, until, faces, bool(done)) for job, shard, owner, until, faces, done
                in rows]

    def complete_job(self, job: str) -> bool:
        with self._tx() as conn:  # the row of shard -1 marks the job announced
            return conn.execute("INSERT OR IGNORE INTO work_shards VALUES (?, -1, '', 0, 0, 1)",
                                (job,)).rowcount == 1

    # ---- meta --------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as conn:
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def swap_meta(self, key: str, change: Callable[[str], str]) -> str:
        with self._tx() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            current = row[0] if row else ""
            conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, change(current)))
            return current
