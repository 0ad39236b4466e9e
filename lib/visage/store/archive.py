"""Backup and restore: one portable archive of a whole store, taken while it runs, restored
into an empty store of either backend (SQLite, Cassandra / Cosmos DB). Built on the storage
roles (visage.store.base): read through the read methods every backend has, written through
the restore primitives (restore_persona, restore_image, restore_hidden, restore_model_version,
restore_events) and the ordinary label, prediction, training-job and meta writes.

The archive (format 1)
----------------------
A plain archive is a stream of records: MAGIC, then records, each a 4-byte big-endian length,
that many bytes of a JSON header ({"kind": ..., fields..., "blobs": [lengths]}), then its blobs
(image bytes, embeddings as little-endian float32, crops, ONNX artifacts). Kinds in stream order:
header, image (with its faces), persona, label, prediction, hidden, model_version, training_job,
meta, ledger, event, end. The end record holds the SHA-256 of every byte before it and the counts,
so a truncated or altered plain archive is refused. This is what QueryService.Backup streams.

`visage backup` writes it encrypted (seal/unseal): ENCRYPTED_MAGIC, a 16-byte random file id,
then frames of at most FRAME_BYTES of plain archive, each a 4-byte length and its AES-256-GCM
ciphertext under the key file's 32-byte key; nonce = file id[:4] + the frame number (8 bytes),
associated data = magic + file id + frame number + a last-frame flag. A frame altered, dropped,
reordered or cut off, or a missing last frame, fails authentication: the archive is refused.

Consistency: one point of the event log
---------------------------------------
The backup notes the log's newest cursor C0, copies images and faces (the bulk), then reads the
whole log until it has caught up (cursor C, the cut), reads every label, reads the log again
until caught up, and replays the label events after C0 over the labels read: for every
(face, persona) an event after C0 touched, its last event decides (LABELLED: the row, taken
from the store when it agrees, else made from the event's face, persona, verdict, actor and
time; a BELONGS ends the face's other BELONGS; UNLABELLED: no row). Images whose IMAGE_INGESTED
is after C0 but were not copied are copied then. So the archive's labels and events are those
of the cut: every label row has its event and every standing label event its row (SQLite: a
label's row and event commit in one transaction; Cassandra writes the row, then the event: a
row newer than the backup's start whose event has not landed is waited for, up to
UNEXPLAINED_WAIT_S, then left out). Personas, hidden marks, predictions (derived data: the last
verdicts), model versions and training jobs are read after the cut, as they are then.

Erasure
-------
Every erasure adds its ids to the store's erasure ledger (visage.store.domain.record_erasure);
every archive carries the ledger as it was at the end of the backup. A restore applies the union
of the archive's ledger, the target store's and those of any `erasures_from` archives: erased
images, faces and deleted personas are not written, nor their labels, verdicts, hidden marks or
events, and every version made before an erasure of labels of a persona it names is restored
WITHDRAWN without its artifact. An operator restoring an old archive passes the newest archive
(or keeps the store the ledger lives in) so that later erasures are applied too.

Restore
-------
Into an empty store (no image, persona or model version), unless `force`; run again after an
interruption (the same archive, not yet finished) it finishes the job (every write is an upsert; events are counted in meta, on
SQLite in the same transaction as each batch, and on Cassandra they have ids derived from the
archive, so a batch written twice is stored once). Nothing is written before the whole archive
has been read and authenticated.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import struct
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from visage.store import domain
from visage.store.base import (
    RECLASSIFIED_VERSION_KEY,
    WITHDRAWN_REASON,
    Store,
    StoreError,
)
from visage.store.records import (
    EventRecord,
    FaceRecord,
    ImageRecord,
    LabelRecord,
    ModelVersionRecord,
    PersonaRecord,
    PredictionRecord,
    TrainingJobRecord,
    embedding_from_bytes,
    embedding_to_bytes,
    now,
)
from visage.v1 import resources_pb2 as pb

log = logging.getLogger(__name__)

FORMAT = 1
MAGIC = b"VISAGE-ARCHIVE/1\n"
ENCRYPTED_MAGIC = b"VISAGE-ARCHIVE-AESGCM/1\n"
FRAME_BYTES = 1024 * 1024  # plain bytes per encrypted frame (and per Backup message)
KEY_BYTES = 32
IMAGE_PAGE = 1000  # images read per page while copying
READ_THREADS = 8  # image contents read in parallel (Cassandra: one round trip each)
WRITE_THREADS = 8  # images restored in parallel
EVENT_PAGE = 1000
UNEXPLAINED_WAIT_S = 30.0  # how long a backup waits for the event of a label row written during it
EVENT_BATCH = 500  # events restored per transaction
# Meta state a backup carries (besides the active version, carried by the versions themselves).
CARRIED_META_KEYS = ("trainer.pinned_version", RECLASSIFIED_VERSION_KEY)
# Event consumers that read the log from its start when they have no cursor: a restore sets
# their cursor to the restored log's end, so the restored past is not handled again (the
# trainer would retrain on every restored label). Checked against the trainer's own key in tests.
CONSUMER_CURSOR_KEYS = ("trainer.event_cursor",)
RESTORE_ARCHIVE_KEY = "restore.archive"  # the archive a restore into this store is (or was) writing
RESTORE_EVENTS_KEY = "restore.events"  # how many of its events are restored
RESTORE_DONE_KEY = "restore.done"  # the archive id, once its restore finished
RESTORE_SOURCE_KEY = "restore.source"  # JSON: the archive's source and cut cursor, once finished


class ArchiveError(Exception):
    """The archive cannot be read or restored (truncated, altered, wrong key, not an archive,
    or the target store is not empty): the message says which; nothing was written."""


class StoreNotEmpty(ArchiveError):
    """A restore into a store that already holds data (pass force to merge into it)."""


@dataclass
class Progress:
    """Faces copied (backup) or restored (restore) of `faces_total`, and the current phase."""
    faces_done: int = 0
    faces_total: int = 0
    phase: str = ""


# ---- keys -----------------------------------------------------------------------------
def new_key(path: Path) -> bytes:
    """Writes a new random 256-bit key to `path` (base64, mode 0600) and returns it."""
    key = AESGCM.generate_key(bit_length=8 * KEY_BYTES)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(base64.b64encode(key).decode() + "\n")
    return key


def read_key(path: Path) -> bytes:
    try:
        key = base64.b64decode(Path(path).read_text().strip(), validate=True)
    except (OSError, ValueError) as error:
        raise ArchiveError(f"cannot read the backup key {path}: {error}") from error
    if len(key) != KEY_BYTES:
        raise ArchiveError(f"{path} is not a backup key (expected {KEY_BYTES} bytes in base64)")
    return key


# ---- encryption (seal / unseal) ----------------------------------------------------------
def _aad(file_id: bytes, number: int, last: bool) -> bytes:
    return ENCRYPTED_MAGIC + file_id + struct.pack(">Q?", number, last)


def seal(plain: Iterable[bytes], key: bytes) -> Iterator[bytes]:
    """The encrypted archive of a plain archive given as chunks (see the module doc)."""
    aead, file_id = AESGCM(key), os.urandom(16)
    yield ENCRYPTED_MAGIC + file_id
    number, pending = 0, bytearray()

    def frame(data: bytes, last: bool) -> bytes:
        sealed = aead.encrypt(file_id[:4] + struct.pack(">Q", number), data, _aad(file_id, number, last))
        return struct.pack(">I", len(sealed)) + sealed

    for chunk in plain:
        pending += chunk
        while len(pending) > FRAME_BYTES:
            yield frame(bytes(pending[:FRAME_BYTES]), False)
            del pending[:FRAME_BYTES]
            number += 1
    yield frame(bytes(pending), True)


def _read_exactly(file: BinaryIO, size: int, what: str) -> bytes:
    data = file.read(size)
    if len(data) != size:
        raise ArchiveError(f"the archive is truncated (it ends inside {what})")
    return data


def unseal(file: BinaryIO, key: bytes) -> Iterator[bytes]:
    """The plain archive inside an encrypted one, frame by frame, each authenticated before it
    is given out; ArchiveError when a frame is altered, missing or cut off, or the key is wrong."""
    if _read_exactly(file, len(ENCRYPTED_MAGIC), "its first line") != ENCRYPTED_MAGIC:
        raise ArchiveError("not an encrypted Visage archive")
    aead, file_id = AESGCM(key), _read_exactly(file, 16, "its header")
    number = 0
    while True:
        head = file.read(4)
        if not head:
            raise ArchiveError("the archive is truncated (its last frame is missing)")
        if len(head) < 4:
            raise ArchiveError("the archive is truncated (it ends inside a frame header)")
        (size,) = struct.unpack(">I", head)
        if size > FRAME_BYTES + 64:
            raise ArchiveError("the archive is damaged (a frame header is wrong)")
        sealed = _read_exactly(file, size, f"frame {number}")
        nonce = file_id[:4] + struct.pack(">Q", number)
        for last in (False, True):
            try:
                plain = aead.decrypt(nonce, sealed, _aad(file_id, number, last))
                break
            except InvalidTag:
                continue
        else:
            raise ArchiveError(f"frame {number} of the archive fails authentication: the archive was altered "
                               "or damaged, or this is not its key")
        yield plain
        if last:
            if file.read(1):
                raise ArchiveError("the archive has data after its last frame: it was altered")
            return
        number += 1


# ---- the plain record stream -----------------------------------------------------------------
class _Writer:
    """Records as bytes, hashed as they go (the end record holds the hash)."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256(MAGIC)
        self.counts: dict[str, int] = {}

    def start(self) -> bytes:
        return MAGIC

    def record(self, kind: str, fields: dict, blobs: tuple[bytes, ...] = ()) -> bytes:
        header = json.dumps({"kind": kind, **fields, "blobs": [len(b) for b in blobs]},
                            separators=(",", ":")).encode()
        data = struct.pack(">I", len(header)) + header + b"".join(blobs)
        self.hash.update(data)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        return data

    def end(self, fields: dict) -> bytes:
        return self.record("end", {**fields, "counts": dict(self.counts), "sha256": self.hash.hexdigest()})


class _ChunkReader(io.RawIOBase):
    """A file over an iterator of byte chunks."""

    def __init__(self, chunks: Iterable[bytes], underlying: BinaryIO | None = None) -> None:
        super().__init__()
        self._chunks, self._pending, self._at, self._underlying = iter(chunks), b"", 0, underlying

    def close(self) -> None:
        if self._underlying is not None:
            self._underlying.close()
        super().close()

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        out = bytearray()
        while size < 0 or len(out) < size:
            if self._at >= len(self._pending):
                self._pending, self._at = next(self._chunks, b""), 0
                if not self._pending:
                    break
            take = len(self._pending) - self._at if size < 0 else min(size - len(out), len(self._pending) - self._at)
            out += self._pending[self._at:self._at + take]
            self._at += take
        return bytes(out)


def read_records(plain: BinaryIO) -> Iterator[tuple[dict, list[bytes]]]:
    """(header, blobs) of every record of a plain archive, the end record's hash and counts
    checked; ArchiveError when it is truncated, altered or not an archive."""
    if _read_exactly(plain, len(MAGIC), "its first line") != MAGIC:
        raise ArchiveError("not a Visage archive (or an encrypted one: give its key)")
    digest = hashlib.sha256(MAGIC)
    counts: dict[str, int] = {}
    while True:
        head = plain.read(4)
        if not head:
            raise ArchiveError("the archive is truncated (its end record is missing)")
        if len(head) < 4:
            raise ArchiveError("the archive is truncated (it ends inside a record)")
        (size,) = struct.unpack(">I", head)
        raw = _read_exactly(plain, size, "a record")
        try:
            header = json.loads(raw)
            lengths = [int(n) for n in header.pop("blobs")]
        except (ValueError, KeyError, TypeError) as error:
            raise ArchiveError(f"the archive is damaged (a record cannot be read: {error})") from error
        if header.get("kind") == "end":
            if header.get("sha256") != digest.hexdigest() or header.get("counts") != counts:
                raise ArchiveError("the archive was altered or damaged (its checksum does not match)")
            if plain.read(1):
                raise ArchiveError("the archive has data after its end record: it was altered")
            yield header, []
            return
        blobs = [_read_exactly(plain, n, "a record's data") for n in lengths]
        digest.update(head + raw + b"".join(blobs))
        counts[header["kind"]] = counts.get(header["kind"], 0) + 1
        yield header, blobs


def open_plain(path: Path, key: bytes | None) -> BinaryIO:
    """The plain archive of the file at `path` (decrypted with `key` when it is encrypted)."""
    file = open(path, "rb")  # noqa: SIM115 - the reader owns it
    start = file.read(len(ENCRYPTED_MAGIC))
    file.seek(0)
    if start == ENCRYPTED_MAGIC:
        if key is None:
            file.close()
            raise ArchiveError(f"{path} is encrypted: give its key (--key-file or VISAGE_BACKUP_KEY_FILE)")
        return _ChunkReader(unseal(file, key), file)  # type: ignore[return-value]
    return file


# ---- records <-> store records --------------------------------------------------------------
def _face_fields(face: FaceRecord) -> dict:
    return {"face_id": face.face_id, "index": face.index, "box": [int(v) for v in face.box],
            "landmarks": [[float(x), float(y)] for x, y in face.landmarks], "create_time": face.create_time,
            "drawn_by": face.drawn_by}


def _image_record(writer: _Writer, image: ImageRecord, content: bytes, faces: list[FaceRecord]) -> bytes:
    blobs = [content]
    for face in faces:
        blobs += [embedding_to_bytes(face.embedding), face.crop_jpeg]
    return writer.record("image", {"image": image.__dict__, "faces": [_face_fields(f) for f in faces]}, tuple(blobs))


def _image_from(header: dict, blobs: list[bytes]) -> tuple[ImageRecord, bytes, list[FaceRecord]]:
    image = ImageRecord(**header["image"])
    faces = []
    for i, fields in enumerate(header["faces"]):
        embedding, crop = blobs[1 + 2 * i], blobs[2 + 2 * i]
        faces.append(FaceRecord(fields["face_id"], image.image_id, fields["index"], tuple(fields["box"]),
                                [tuple(p) for p in fields["landmarks"]], embedding_from_bytes(embedding).copy(),
                                crop, fields["create_time"], fields.get("drawn_by", "")))
    return image, blobs[0], faces


def _event_fields(event: EventRecord) -> dict:
    return {"cursor": event.cursor, "origin": event.origin, "type": event.type, "subject": event.subject,
            "attributes": event.attributes, "create_time": event.create_time}


# ---- backup ---------------------------------------------------------------------------------
def _read_log(store: Store, after: str, seen: set[str], into: list[EventRecord]) -> str:
    """Appends the events after `after` (each once, by origin) until a page comes back short
    (caught up); returns the last cursor read."""
    while True:
        page = store.read_events(after, EVENT_PAGE)
        for event in page:
            key = event.origin or event.cursor
            if key not in seen:
                seen.add(key)
                into.append(event)
        if page:
            after = page[-1].cursor
        if len(page) < EVENT_PAGE:
            return after


class _LabelReplay:
    """The labels at the cut: the rows read, with the label events after C0 replayed over them."""

    def __init__(self, rows: list[LabelRecord]) -> None:
        self.rows = {(label.face_id, label.persona_id): label for label in rows}
        self.by_face: dict[str, dict[str, LabelRecord | None]] = {}
        for label in rows:
            self.by_face.setdefault(label.face_id, {})[label.persona_id] = label
        self.touched: set[tuple[str, str]] = set()

    def _set(self, face_id: str, persona_id: str, label: LabelRecord | None) -> None:
        self.by_face.setdefault(face_id, {})[persona_id] = label
        self.touched.add((face_id, persona_id))

    def apply(self, event: EventRecord) -> None:
        face_id, persona_id = event.subject, event.attributes.get("persona_id", "")
        if event.type == pb.EVENT_TYPE_FACE_UNLABELLED:
            self._set(face_id, persona_id, None)
        elif event.type == pb.EVENT_TYPE_FACE_LABELLED:
            verdict = pb.Verdict.Value(event.attributes.get("verdict", "VERDICT_BELONGS"))
            if verdict == pb.VERDICT_BELONGS:  # it ends the face's other BELONGS label
                for other, label in list(self.by_face.get(face_id, {}).items()):
                    if other != persona_id and label is not None and label.verdict == pb.VERDICT_BELONGS:
                        self._set(face_id, other, None)
            row = self.rows.get((face_id, persona_id))
            self._set(face_id, persona_id, row if row is not None and row.verdict == verdict else LabelRecord(
                face_id, persona_id, verdict, event.attributes.get("actor", "anonymous"), event.create_time))

    def unexplained(self, since: float) -> list[tuple[str, str]]:
        """Rows written after `since` that no replayed event accounts for (their event not landed)."""
        return [pair for pair, label in self.rows.items() if pair not in self.touched and label.create_time > since]

    def labels(self, dropped: set[tuple[str, str]]) -> list[LabelRecord]:
        return [label for face_id, labels in sorted(self.by_face.items()) for persona_id, label in sorted(
            labels.items(), key=lambda item: item[0]) if label is not None and (face_id, persona_id) not in dropped]


def backup(store: Store, progress: Callable[[Progress], None] = lambda _p: None) -> Iterator[bytes]:
    """The plain archive of a running store, as chunks (see the module doc)."""
    writer = _Writer()
    started, first_cursor = now(), store.latest_cursor()
    state = Progress(0, store.count_faces(), "images")
    header = {"format": FORMAT, "archive_id": uuid.uuid4().hex, "create_time": started,
              "source": type(store).__name__, "start_cursor": first_cursor, "faces_total": state.faces_total}
    progress(state)
    yield writer.start() + writer.record("header", header)
    copied: set[str] = set()
    face_ids: set[str] = set()

    def copy(images: list[ImageRecord]) -> Iterator[bytes]:
        images = [image for image in images if image.image_id not in copied]
        if not images:
            return
        placed = store.faces_of_images([image.image_id for image in images])
        with ThreadPoolExecutor(READ_THREADS) as pool:
            contents = list(pool.map(store.get_image_content, [image.image_id for image in images]))
        faces = {face.face_id: face for face in store.get_faces(
            [face.face_id for image in images for face in placed[image.image_id]])}  # with crops
        for image, content in zip(images, contents):
            if content is None:  # erased while we read
                continue
            own = [faces[f.face_id] for f in placed[image.image_id] if f.face_id in faces]
            copied.add(image.image_id)
            face_ids.update(f.face_id for f in own)
            state.faces_done += len(own)
            yield _image_record(writer, image, content, own)
        progress(state)

    offset = 0
    while page := store.list_images(offset, IMAGE_PAGE):  # newest first: an ingest meanwhile repeats, never skips
        offset += len(page)
        yield from copy(page)

    # The cut: the log until caught up, the labels, the log again; then the label events replayed.
    state.phase = "labels and events"
    progress(state)
    events: list[EventRecord] = []
    seen: set[str] = set()
    cursor = _read_log(store, "", seen, events)
    replay = _LabelReplay(list(store.iter_labels()))
    cursor = _read_log(store, cursor, seen, events)
    after_start = [e for e in events if not first_cursor or e.cursor > first_cursor]
    for event in after_start:
        replay.apply(event)
    deadline = time.monotonic() + UNEXPLAINED_WAIT_S
    while (waiting := replay.unexplained(started)) and time.monotonic() < deadline:
        more: list[EventRecord] = []
        cursor = _read_log(store, cursor, seen, more)
        events += more
        for event in more:
            replay.apply(event)
        if not more:
            time.sleep(0.05)  # an event written between our reads is landing: poll the log
    if waiting:
        log.warning("backup: %d label row(s) written during the backup have no event; left out", len(waiting))
    ingested = [e.subject for e in after_start if e.type == pb.EVENT_TYPE_IMAGE_INGESTED and e.subject not in copied]
    # An image a face was drawn on after it was copied is copied again, with that face (a restore upserts).
    drawn_on = {e.attributes.get("image_id", "") for e in after_start if e.type == pb.EVENT_TYPE_FACE_ADDED}
    copied -= drawn_on
    yield from copy([image for image in map(store.get_image, dict.fromkeys([*ingested, *drawn_on]))
                     if image is not None])

    state.phase = "personas, labels, predictions, models"
    progress(state)
    personas = store.list_personas()
    persona_ids = {p.persona_id for p in personas}
    out = [writer.record("persona", p.__dict__) for p in personas]
    out += [writer.record("label", label.__dict__) for label in replay.labels(set(waiting))
            if label.face_id in face_ids and label.persona_id in persona_ids]
    yield b"".join(out)
    batch: list[bytes] = []
    for prediction in store.iter_predictions():
        if prediction.face_id in face_ids:
            batch.append(writer.record("prediction", prediction.__dict__))
            if len(batch) >= 5000:
                yield b"".join(batch)
                batch = []
    yield b"".join(batch)
    for kind in ("face", "persona"):
        ids = sorted(store.hidden_ids(kind) & (face_ids if kind == "face" else persona_ids))
        yield writer.record("hidden", {"hidden_kind": kind, "item_ids": ids})
    for version in store.list_model_versions():
        artifact = store.get_model_artifact(version.version)
        yield writer.record("model_version", {"record": version.__dict__, "has_artifact": artifact is not None},
                            (artifact or b"",))
    yield b"".join(writer.record("training_job", job.__dict__) for job in store.list_training_jobs(100_000))
    yield writer.record("meta", {"values": {key: value for key in CARRIED_META_KEYS
                                            if (value := store.get_meta(key)) is not None}})
    yield writer.record("ledger", {"entries": domain.read_ledger(store)})
    for start in range(0, len(events), 5000):
        yield b"".join(writer.record("event", _event_fields(e)) for e in events[start:start + 5000])
    state.phase = "done"
    progress(state)
    yield writer.end({"cut_cursor": cursor, "faces": len(face_ids), "images": len(copied)})


def write_backup(store: Store, output: Path, key: bytes | None,
                 progress: Callable[[Progress], None] = lambda _p: None) -> None:
    """backup() into a file (sealed with `key`; None: plain), renamed into place when complete."""
    save(backup(store, progress), output, key)


def save(plain: Iterable[bytes], output: Path, key: bytes | None) -> None:
    partial = output.with_name(output.name + ".partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # biometric data: owner only
        with os.fdopen(fd, "wb") as file:
            for chunk in (seal(plain, key) if key is not None else plain):
                file.write(chunk)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)


# ---- restore --------------------------------------------------------------------------------
@dataclass
class Ledger:
    """The union of erasure ledgers a restore applies."""
    entries: list[dict] = field(default_factory=list)

    def add(self, entries: Iterable[dict]) -> None:
        known = {json.dumps(e, sort_keys=True) for e in self.entries}
        for entry in entries:
            if json.dumps(entry, sort_keys=True) not in known:
                known.add(json.dumps(entry, sort_keys=True))
                self.entries.append(entry)

    @property
    def images(self) -> set[str]:
        return {i for e in self.entries for i in e.get("image_ids", ())}

    @property
    def faces(self) -> set[str]:
        return {f for e in self.entries for f in e.get("face_ids", ())}

    @property
    def deleted_personas(self) -> set[str]:
        return {e["deleted_persona"] for e in self.entries if e.get("deleted_persona")}

    def withdraws(self, version: ModelVersionRecord) -> bool:
        """Whether an erasure after the version was made removed labels of a persona it names."""
        named = set(version.persona_ids)
        return any(e["time"] >= version.create_time and named & {*e.get("persona_ids", ()), e.get("deleted_persona")}
                   for e in self.entries)


@dataclass
class _Summary:
    header: dict
    end: dict
    ledger: list[dict]
    faces_total: int


def verify(open_archive: Callable[[], BinaryIO]) -> _Summary:
    """Reads the whole archive once, authenticating it, and writes nothing."""
    header, ledger, faces = None, [], 0
    with open_archive() as plain:
        for fields, _blobs in read_records(plain):
            kind = fields["kind"]
            if header is None:
                if kind != "header" or fields.get("format") != FORMAT:
                    raise ArchiveError(f"unsupported archive format {fields.get('format')!r} (this is {FORMAT})")
                header = fields
            elif kind == "image":
                faces += len(fields["faces"])
            elif kind == "ledger":
                ledger = fields["entries"]
            elif kind == "end":
                return _Summary(header, fields, ledger, faces)
    raise ArchiveError("the archive is truncated")


def is_empty(store: Store) -> bool:
    return store.count_images() == 0 and not store.list_personas() and not store.list_model_versions()


def restore(store: Store, open_archive: Callable[[], BinaryIO], *, force: bool = False,
            erasures_from: Iterable[Callable[[], BinaryIO]] = (),
            progress: Callable[[Progress], None] = lambda _p: None) -> dict:
    """Restores the archive `open_archive()` reads (a plain archive: see open_plain) into the
    store: verified first, then written (see the module doc). Returns counts of what it wrote.
    Raises ArchiveError (nothing written) or StoreNotEmpty."""
    summary = verify(open_archive)
    ledger = Ledger()
    ledger.add(summary.ledger)
    for other in erasures_from:
        ledger.add(verify(other).ledger)
    archive_id = summary.header["archive_id"]
    same_archive = store.get_meta(RESTORE_ARCHIVE_KEY) == archive_id
    resuming = same_archive and store.get_meta(RESTORE_DONE_KEY) != archive_id  # an interrupted restore of it
    if not force and not resuming and not is_empty(store):
        raise StoreNotEmpty("the target store is not empty (it holds images, personas or model versions): "
                            "restore into an empty store, or pass --force to merge the archive into it")
    ledger.add(domain.read_ledger(store))
    if not same_archive:  # (the same archive again keeps its count: its events are not appended twice)
        store.set_meta(RESTORE_DONE_KEY, "")
        store.set_meta(RESTORE_EVENTS_KEY, "0")
        store.set_meta(RESTORE_ARCHIVE_KEY, archive_id)
    domain.add_to_ledger(store, ledger.entries)  # before any data: a crash leaves the ledger in place
    erased_images, erased_faces, deleted = ledger.images, ledger.faces, ledger.deleted_personas
    state = Progress(0, summary.faces_total, "images")
    counts: dict[str, int] = {}
    faces_kept: set[str] = set()
    personas_kept: set[str] = set()
    events: list[EventRecord] = []
    predictions: list[PredictionRecord] = []
    written_events = int(store.get_meta(RESTORE_EVENTS_KEY) or 0)

    def count(kind: str, n: int = 1) -> None:
        counts[kind] = counts.get(kind, 0) + n

    with open_archive() as plain, _Writes(WRITE_THREADS) as writing:
        for fields, blobs in read_records(plain):
            kind = fields.pop("kind")
            if kind != "prediction" and predictions:
                _restore_predictions(store, predictions, faces_kept, personas_kept, count)
                predictions = []
            if kind != "image":
                writing.drain()
            if kind == "image":
                image, content, faces = _image_from(fields, blobs)
                state.faces_done += len(faces)
                if image.image_id in erased_images:
                    continue
                kept = [f for f in faces if f.face_id not in erased_faces]
                if len(kept) != len(faces):
                    image.face_count = len(kept)
                writing.submit(store.restore_image, image, content, kept)
                faces_kept.update(f.face_id for f in kept)
                count("images")
                count("faces", len(kept))
                if counts["images"] % 100 == 0:
                    progress(state)
            elif kind == "persona":
                if fields["persona_id"] not in deleted:
                    store.restore_persona(PersonaRecord(**fields))
                    personas_kept.add(fields["persona_id"])
                    count("personas")
                state.phase = "personas, labels, predictions"
            elif kind == "label":
                label = LabelRecord(**fields)
                if label.face_id in faces_kept and label.persona_id in personas_kept:
                    store.write_label(label)
                    count("labels")
            elif kind == "prediction":
                predictions.append(PredictionRecord(**fields))
                if len(predictions) >= 5000:
                    _restore_predictions(store, predictions, faces_kept, personas_kept, count)
                    predictions = []
            elif kind == "hidden":
                kept_ids = faces_kept if fields["hidden_kind"] == "face" else personas_kept
                ids = [i for i in fields["item_ids"] if i in kept_ids]
                store.restore_hidden(fields["hidden_kind"], ids)
                count("hidden", len(ids))
            elif kind == "model_version":
                record = ModelVersionRecord(**fields["record"])
                artifact = blobs[0] if fields["has_artifact"] else None
                if record.state != pb.MODEL_STATE_WITHDRAWN and ledger.withdraws(record):
                    record.state, record.gate_reason, artifact = pb.MODEL_STATE_WITHDRAWN, WITHDRAWN_REASON, None
                    count("withdrawn_versions")
                store.restore_model_version(record, artifact)
                count("model_versions")
            elif kind == "training_job":
                store.put_training_job(TrainingJobRecord(**fields))
                count("training_jobs")
            elif kind == "meta":
                for key, value in fields["values"].items():
                    store.set_meta(key, value)
            elif kind == "event":
                event = EventRecord(fields["cursor"], fields["type"], fields["subject"], fields["attributes"],
                                    fields["create_time"], fields["origin"])
                if _keeps(event, erased_images | erased_faces | deleted, deleted):
                    events.append(event)
    state.phase = "events"
    progress(state)
    _restore_events(store, events, written_events)
    count("events", len(events))
    for key in CONSUMER_CURSOR_KEYS:
        store.set_meta(key, store.latest_cursor())
    store.set_meta(RESTORE_SOURCE_KEY, json.dumps({"source": summary.header["source"],
                                                   "cut_cursor": summary.end["cut_cursor"]}))
    store.set_meta(RESTORE_DONE_KEY, archive_id)
    state.phase = "done"
    progress(state)
    return counts


class _Writes:
    """Image writes in flight on a few threads (Cassandra: each is several round trips), at most
    `threads` * 4 at once; drain() waits for them all and raises the first failure."""

    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(threads)
        self._limit = threads * 4
        self._futures: list = []

    def __enter__(self) -> "_Writes":
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                self.drain()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, call, *args) -> None:
        self._futures.append(self._pool.submit(call, *args))
        if len(self._futures) >= self._limit:
            self._futures.pop(0).result()

    def drain(self) -> None:
        while self._futures:
            self._futures.pop(0).result()


def _restore_predictions(store: Store, predictions: list[PredictionRecord], faces: set[str], personas: set[str],
                         count: Callable[[str, int], None]) -> None:
    kept = [p for p in predictions if p.face_id in faces and (not p.persona_id or p.persona_id in personas)]
    if kept:
        store.put_predictions(kept)
        count("predictions", len(kept))


def _keeps(event: EventRecord, erased: set[str], deleted_personas: set[str]) -> bool:
    """Whether a restored log keeps the event: not one naming erased data (an erasure's own
    ERASED and PERSONA_DELETED events name only ids and stay, as in the store it came from)."""
    if event.type in (pb.EVENT_TYPE_ERASED, pb.EVENT_TYPE_PERSONA_DELETED):
        return True
    return event.subject not in erased and event.attributes.get("persona_id") not in deleted_personas


def _restore_events(store: Store, events: list[EventRecord], written: int) -> None:
    """Appends the events not restored yet, each strictly after the one before it, counted in
    meta with each batch (SQLite: in the batch's transaction)."""
    last = 0.0
    for event in events:  # strictly increasing times: the same for every run over this archive
        event.create_time = last = max(event.create_time, last + 1e-6)
    for start in range(written, len(events), EVENT_BATCH):
        batch = events[start:start + EVENT_BATCH]
        with store.atomic():
            store.restore_events(batch)
            store.set_meta(RESTORE_EVENTS_KEY, str(start + len(batch)))


__all__ = ["ArchiveError", "Progress", "StoreError", "StoreNotEmpty", "backup", "new_key", "open_plain",
           "read_key", "restore", "save", "seal", "unseal", "verify", "write_backup"]
