"""The one store interface. Every service talks to storage only through it;
SQLite (embedded default) and Cassandra (scale-out) implement it and pass the
same conformance suite (tests/store/).

Rules both backends keep:
- Writes are idempotent (the same call twice leaves the same data), because
  event consumers resuming from a saved cursor are at-least-once (read_events) and
  Cassandra has no multi-row transactions.
- Concurrent writers (threads, processes, replicas; tests/store/test_store_races.py):
  concurrent put_image of one image stores it once, exactly one call returns True and
  one IMAGE_INGESTED is appended; concurrent put_model_version(version=0) get distinct
  numbers; activate_model_version is one conditional transition, so however activations
  and withdrawals interleave exactly one version (or none) is ACTIVE and it is the one
  active_model_version returns; of concurrent BELONGS labels of one face exactly one
  stands; a gate decision (record_gate_decision) never overwrites a withdrawal, whichever
  lands first. SQLite: one write transaction each. Cassandra: lightweight transactions. A
  conditional write that keeps losing races raises StoreConflict (retry).
- Errors: only StoreError kinds (NotFound, Withdrawn, StoreUnavailable, StoreConflict,
  StoreCorrupt) and ValueError for a malformed argument; visage.errors maps them to gRPC.
- An image becomes visible only after its faces are written: the image row is
  the commit point of an ingest.
- Every change that matters appends an event, after the change itself.
- Events carry ids and counts, never names or file names.

Erasure (privacy): delete_image, delete_face and delete_persona remove the data
everywhere the store keeps it (rows, crops, embeddings, bytes, labels,
predictions, and earlier events naming the erased ids), withdraw every model
version trained on an erased label (see withdraw_candidates) and append one
ERASED event naming only ids. They are idempotent in effect; a second call
raises NotFound (the RPCs answer NOT_FOUND / 404) and changes nothing. A crash
midway leaves the commit row (image, face or persona) in place, so a retry
finishes the erasure.
"""
from __future__ import annotations

import abc
import contextlib
import functools
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

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
)
from visage.v1 import resources_pb2 as pb


class StoreError(Exception):
    """Base of the store's own errors. Both backends raise only these (and ValueError for a
    malformed argument): driver and sqlite3 errors are translated at the backend's boundary
    (translate_errors), and visage.errors maps each kind to one gRPC status for every service."""


class NotFound(StoreError):
    """The id names nothing stored."""


class Withdrawn(StoreError):
    """The model version was trained on labels since erased: it can never be activated again."""


class StoreUnavailable(StoreError):
    """The store cannot answer now (unreachable, timed out, overloaded, locked): worth a retry."""


class StoreConflict(StoreError):
    """A conditional write lost to a concurrent one and could not be settled here."""


class AlreadyExists(StoreError):
    """What a request would create is stored already (the text names it)."""


class StoreCorrupt(StoreError):
    """Stored data is inconsistent (e.g. chunks of a stored blob are missing)."""


def translate_errors(translate: Callable[[Exception], StoreError | None]):
    """Class decorator for a backend: every public Store method re-raises the errors
    `translate` recognises (the driver's, sqlite3's) as the StoreError it returns, so no
    caller ever sees a backend's own exception types. StoreErrors pass through untouched
    (a method calling another is translated once); what `translate` does not recognise
    (None: a bug) propagates unchanged."""
    def translated(error: Exception) -> Exception:
        mapped = None if isinstance(error, StoreError) else translate(error)
        return error if mapped is None else mapped

    def wrap(method):
        if inspect.isgeneratorfunction(method):
            @functools.wraps(method)
            def generator(*args, **kwargs):
                try:
                    yield from method(*args, **kwargs)
                except Exception as error:
                    mapped = translated(error)
                    if mapped is error:
                        raise
                    raise mapped from error
            return generator

        @functools.wraps(method)
        def call(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            except Exception as error:
                mapped = translated(error)
                if mapped is error:
                    raise
                raise mapped from error
        return call

    def decorate(cls):
        for name in dir(Store):
            if not name.startswith("_") and callable(getattr(Store, name)):
                setattr(cls, name, wrap(getattr(cls, name)))
        return cls
    return decorate


ACTIVE_VERSION_KEY = "active_model_version"  # meta key of the active version ("" or absent: none)
# Meta key of the version whose full re-classification last completed: every stored verdict was
# evaluated by it (those it left unchanged are its verdicts within PREDICTION_TOLERANCE).
RECLASSIFIED_VERSION_KEY = "classifier.reclassified_version"
# A re-classification rewrites a face's stored prediction only when its persona changes or its
# confidence moves by more than this (changed-only writes); below it the last verdict stands.
PREDICTION_TOLERANCE = 0.01
WITHDRAWN_REASON = "withdrawn: trained on labels that were since erased"


def withdraw_candidates(versions: Iterable[ModelVersionRecord], persona_ids: Iterable[str]) -> list[ModelVersionRecord]:
    """The versions an erasure of labels of these personas must withdraw: every one not yet
    withdrawn that names one of them. Conservative on purpose: whether a version read a given
    label is not recorded per version (a label may have come and gone between trainings),
    but a version that does not name a persona holds nothing of its labels (the centroid
    model keeps only the centroids and rejections of the personas it names)."""
    personas = set(persona_ids)
    return [v for v in versions if v.state != pb.MODEL_STATE_WITHDRAWN and personas & set(v.persona_ids)]


# Meta key of the erasure ledger (ids only, see visage.store.archive.Ledger): every erasure adds
# what it erased, so a restore of an archive made before it does not bring it back.
ERASURE_LEDGER_KEY = "erasure.ledger"

HIDDEN_KINDS = ("face", "persona")

EventStamp = Callable[[dict[str, str]], dict[str, str]]
_event_stamp: EventStamp = dict


def stamp_events_with(stamp: EventStamp) -> None:
    """Who caused an event (and the trace it belongs to) is the request's business, not
    storage's: the server layer (visage.server) registers the stamp that every appended
    event's attributes pass through, so no backend imports auth or tracing."""
    global _event_stamp
    _event_stamp = stamp


def event_attributes(attributes: dict | None) -> dict[str, str]:
    """An event's attributes as stored: stamped, every value text."""
    return {str(k): str(v) for k, v in _event_stamp(dict(attributes or {})).items()}


def is_unknown(labels: Iterable[LabelRecord], prediction: PredictionRecord | None) -> bool:
    """The one rule of who is unknown: nobody labelled the face as belonging to anyone,
    and its stored verdict (the last one stands, whichever version wrote it) is absent,
    says unknown, or names a persona the face was labelled as not belonging to."""
    return unknown_verdict(labels, None if prediction is None else prediction.persona_id)


def unknown_verdict(labels: Iterable[LabelRecord], persona_id: str | None) -> bool:
    """is_unknown of a face with these labels whose verdict names persona_id (None: no verdict)."""
    labels = list(labels)
    if not labels:  # most faces: a re-classification asks this twice for each of thousands a batch
        return not persona_id
    if any(label.verdict == pb.VERDICT_BELONGS for label in labels):
        return False
    if not persona_id:
        return True
    return any(label.persona_id == persona_id and label.verdict == pb.VERDICT_NOT_BELONGS for label in labels)


def stored_verdicts(predictions: Mapping[str, PredictionRecord]) -> dict[str, tuple[str, float]]:
    """changed_rows' `previous` from stored predictions."""
    return {face_id: (p.persona_id, p.confidence) for face_id, p in predictions.items()}


def changed_rows(previous: Mapping[str, tuple[str, float]], face_ids: Sequence[str], persona_ids: Sequence[str],
                 confidences: list[float]) -> list[int]:
    """Positions of the faces whose verdict changes (the last of a face in the columns wins): no
    stored (persona_id, confidence) in `previous`, another persona, or a confidence moved by more
    than PREDICTION_TOLERANCE. Inline, not a call per face: a re-classification asks for
    every face of a batch (tuples, not records, for the same reason)."""
    last = {face_id: i for i, face_id in enumerate(face_ids)}
    return [i for i in last.values() if (stored := previous.get(face_ids[i])) is None or stored[0] != persona_ids[i]
            or abs(stored[1] - confidences[i]) > PREDICTION_TOLERANCE]


def check_prediction_columns(face_ids: Sequence, persona_ids: Sequence, confidences: Sequence) -> None:
    """put_prediction_columns' columns must line up (zip would silently drop the tail)."""
    if not len(face_ids) == len(persona_ids) == len(confidences):
        raise ValueError(f"prediction columns differ in length: {len(face_ids)} face ids, "
                         f"{len(persona_ids)} persona ids, {len(confidences)} confidences")


def face_id_bounds(shard: int, shards: int) -> tuple[str, str | None]:
    """SQLite's shard `shard` of `shards`: face ids in [low, high) (high None: no bound).
    Face ids start with the hex SHA-256 of their image, so hex ranges split them evenly;
    other ids still fall in exactly one shard."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is not one of {shards}")

    def bound(k: int) -> str:
        return format(k * 16 ** 4 // shards, "04x")
    return ("" if shard == 0 else bound(shard)), (None if shard == shards - 1 else bound(shard + 1))


# ---- storage roles --------------------------------------------------------------------
# Each backend implements these storage primitives; the rules over them (erasure cascade,
# label exclusivity and existence, events after changes, withdrawal) are written once in
# visage.store.domain, and Store's rule methods call them. A part of Visage that needs only
# one role is typed with that role.
class Catalogue(abc.ABC):
    """Personas, images and faces, and the marks of hidden ones."""

    # ---- personas --------------------------------------------------------
    @abc.abstractmethod
    def create_persona(self, display_name: str) -> PersonaRecord:
        """New persona with a fresh id; appends PERSONA_CREATED."""

    @abc.abstractmethod
    def get_persona(self, persona_id: str) -> PersonaRecord | None: ...

    @abc.abstractmethod
    def list_personas(self) -> list[PersonaRecord]:
        """All personas ordered by display name (case-insensitive), then id."""

    @abc.abstractmethod
    def rename_persona(self, persona_id: str, display_name: str) -> PersonaRecord:
        """Raises NotFound; appends PERSONA_RENAMED."""

    # Verdicts and erasure: delete_persona deletes the stored verdicts naming the persona.
    # An erasure of labels of a persona that stays (delete_image, delete_face) withdraws the
    # versions trained on them but leaves other faces' verdicts standing (deleting every
    # verdict naming it would cost an erasure seconds at scale): the trainer, woken by ERASED,
    # trains on what remains, and that version's changed-only re-classification rewrites
    # every verdict the erased labels had decided.

    # ---- images and faces -----------------------------------------------
    @abc.abstractmethod
    def put_image(self, image: ImageRecord, content: bytes, faces: list[FaceRecord]) -> bool:
        """Stores an image with its faces. Returns False (and changes nothing)
        when an image with this id is already stored. Appends IMAGE_INGESTED."""

    @abc.abstractmethod
    def put_face(self, face: FaceRecord) -> None:
        """Stores one more face of a stored image (a face drawn on it: its row, crop, place in
        the image's face list and unknown-faces row), the row that makes it visible last.
        Its id and index are new (the domain claims them); the image row and the image's
        face_count are not changed (recount_faces); no event."""

    @abc.abstractmethod
    def get_image(self, image_id: str) -> ImageRecord | None: ...

    @abc.abstractmethod
    def get_image_content(self, image_id: str) -> bytes | None: ...

    @abc.abstractmethod
    def list_images(self, offset: int, limit: int) -> list[ImageRecord]:
        """Newest first."""

    @abc.abstractmethod
    def count_images(self) -> int: ...

    @abc.abstractmethod
    def get_face(self, face_id: str) -> FaceRecord | None: ...

    @abc.abstractmethod
    def get_faces(self, face_ids: Iterable[str]) -> list[FaceRecord]:
        """The faces of these ids that exist, in the order given."""

    @abc.abstractmethod
    def faces_of_image(self, image_id: str) -> list[FaceRecord]:
        """In index order."""

    @abc.abstractmethod
    def faces_of_images(self, image_ids: Iterable[str]) -> dict[str, list[FaceRecord]]:
        """The faces of many images in one call, each image's in index order, WITHOUT
        crops (crop_jpeg is b""): the light read for lists that show boxes, labels and
        predictions (get_faces has the crops). Every id given is a key; an image
        without faces, or unknown, maps to []."""

    @abc.abstractmethod
    def count_faces(self) -> int: ...

    @abc.abstractmethod
    def iter_embeddings(self, batch_size: int = 8192) -> Iterator[tuple[list[str], np.ndarray]]:
        """Every stored face as (face_ids, float32 matrix [n, 128]) batches,
        so callers read millions of faces in bounded memory."""

    # ---- hidden faces and personas ----------------------------------------
    @abc.abstractmethod
    def set_hidden(self, kind: str, item_id: str, hidden: bool) -> None:
        """Hides (or shows again) a "face" or a "persona". Raises NotFound for an
        unknown one. Appends HIDDEN_CHANGED when the state changes."""

    @abc.abstractmethod
    def hidden_ids(self, kind: str) -> set[str]:
        """Every hidden item of this kind ("face" or "persona"): users hide few."""

    # ---- erasure primitives (the cascade is visage.store.domain's) -------------
    @abc.abstractmethod
    def existing_faces(self, face_ids: Iterable[str]) -> set[str]:
        """The ids of these that name a stored face."""

    @abc.abstractmethod
    def face_ids_of_images(self, image_ids: Sequence[str]) -> list[str]: ...

    @abc.abstractmethod
    def recount_faces(self, image_id: str, erased: Sequence[str]) -> None:
        """Sets the image's face_count to its faces but the `erased` ones (whose rows go last),
        and its status to FACES_FOUND when any stays (a face drawn on an image without one)."""

    @abc.abstractmethod
    def drop_face_details(self, face_ids: Sequence[str]) -> None:
        """Erasure: the faces' crops and their places in their images' face lists."""

    @abc.abstractmethod
    def drop_face_rows(self, face_ids: Sequence[str]) -> None:
        """Erasure: the face rows (embeddings, boxes): a face's commit point."""

    @abc.abstractmethod
    def drop_image_content(self, image_ids: Sequence[str]) -> None:
        """Erasure: the images' bytes and their places in the by-time index."""

    @abc.abstractmethod
    def drop_image_rows(self, image_ids: Sequence[str]) -> None:
        """Erasure: the image rows: an image's commit point."""

    @abc.abstractmethod
    def drop_hidden(self, kind: str, item_ids: Sequence[str]) -> None:
        """Erasure: these items' hidden marks."""

    @abc.abstractmethod
    def drop_persona_row(self, persona_id: str) -> None:
        """Erasure: the persona row: a persona's commit point."""

    # ---- restore primitives (the rule and the archive: visage.store.archive) -----
    @abc.abstractmethod
    def restore_persona(self, persona: PersonaRecord) -> None:
        """Upserts the persona with its own id, name and times (an archive's). No event."""

    @abc.abstractmethod
    def restore_image(self, image: ImageRecord, content: bytes, faces: list[FaceRecord]) -> None:
        """put_image of an archive's image with its own ids and times, as an upsert (a restore
        run again rewrites the same rows): dependents first, the image row (its commit point)
        last, the faces in the unknown-faces index as their labels and verdicts say. No event."""

    @abc.abstractmethod
    def restore_hidden(self, kind: str, item_ids: Sequence[str]) -> None:
        """Marks these items hidden (they exist: the restore rule checks). No event."""


class LabelStore(abc.ABC):
    """Labels: who said a face is (or is not) a persona."""

    # ---- labels ----------------------------------------------------------
    @abc.abstractmethod
    def write_label(self, label: LabelRecord) -> None:
        """Upserts the (face, persona) label, which replaces the face's BELONGS label for
        another persona when it is BELONGS itself (so one BELONGS label stands: SQLite in
        the write's transaction, Cassandra through the face's BELONGS cell), and keeps the
        unknown-faces index. The face and persona exist (the domain checks); no event."""

    @abc.abstractmethod
    def remove_label(self, face_id: str, persona_id: str) -> bool:
        """Deletes the (face, persona) label and keeps the unknown-faces index; True if one
        was removed. No event."""

    @abc.abstractmethod
    def personas_labelling(self, face_ids: Sequence[str]) -> set[str]:
        """Every persona a stored label row of these faces names (replaced BELONGS rows a
        backend keeps too: withdrawal is conservative)."""

    @abc.abstractmethod
    def drop_labels_of_faces(self, face_ids: Sequence[str]) -> None:
        """Erasure: every label row of these faces and what indexes them."""

    @abc.abstractmethod
    def drop_labels_of_persona(self, persona_id: str) -> None:
        """Erasure: every label naming the persona (its faces may become unknown)."""

    @abc.abstractmethod
    def labels_of_face(self, face_id: str) -> list[LabelRecord]: ...

    @abc.abstractmethod
    def labels_of_persona(self, persona_id: str, verdict: int) -> list[LabelRecord]:
        """Newest first."""

    @abc.abstractmethod
    def count_labels(self, persona_ids: Iterable[str], verdict: int) -> dict[str, int]:
        """Number of labels with this verdict of each persona, without reading
        them. Every id given is a key (0 when none)."""

    @abc.abstractmethod
    def iter_labels(self) -> Iterator[LabelRecord]:
        """Every label (training input)."""

    def labels_of_faces(self, face_ids: Iterable[str]) -> dict[str, list[LabelRecord]]:
        """labels_of_face for many faces in a few reads; every id given is a key."""
        return {face_id: self.labels_of_face(face_id) for face_id in dict.fromkeys(face_ids)}


class PredictionStore(abc.ABC):
    """The stored verdicts and the index of unknown faces."""

    # ---- predictions -----------------------------------------------------
    @abc.abstractmethod
    def put_predictions(self, predictions: list[PredictionRecord]) -> None:
        """Upserts by face id: a face has at most one prediction, the latest (the
        last one of a face in the list wins). The re-classification's bulk write:
        call it with thousands of predictions at a time, not one by one."""

    def put_prediction_columns(self, face_ids: Sequence[str], persona_ids: Sequence[str],
                               confidences: Sequence[float] | np.ndarray, model_version: int,
                               create_time: float, changed_only: bool = False) -> int:
        """put_predictions for one version's batch given as columns: face i is predicted
        persona_ids[i] ("" = unknown) with confidences[i], all with this version and time.
        The same upsert (the last one of a face wins), without a record object per face:
        the re-classification's write, where building 100k records/s costs a core.
        `changed_only` (the re-classification): a face whose stored verdict names the same
        persona with a confidence within PREDICTION_TOLERANCE keeps its stored prediction,
        model_version included ("the last verdict stands"). Returns the rows written.
        Raises ValueError (writing nothing) when the columns differ in length."""
        check_prediction_columns(face_ids, persona_ids, confidences)
        confidences = np.asarray(confidences).tolist()
        rows = range(len(face_ids))
        if changed_only:
            rows = changed_rows(stored_verdicts(self.get_predictions(face_ids)), face_ids, persona_ids, confidences)
        records = [PredictionRecord(face_ids[i], persona_ids[i], confidences[i], model_version, create_time)
                   for i in rows]
        self.put_predictions(records)
        return len({record.face_id for record in records})

    @abc.abstractmethod
    def get_prediction(self, face_id: str) -> PredictionRecord | None: ...

    @abc.abstractmethod
    def get_predictions(self, face_ids: Iterable[str]) -> dict[str, PredictionRecord]:
        """The predictions of many faces in one call (batched like get_faces), by
        face id; faces without a prediction (or unknown) are absent."""

    @abc.abstractmethod
    def predictions_of_persona(self, persona_id: str) -> list[PredictionRecord]:
        """Stored verdicts naming the persona (whichever version wrote them: the last verdict
        stands), by confidence, highest first ("": none, see count_predictions)."""

    @abc.abstractmethod
    def count_predictions(self, persona_ids: Iterable[str]) -> dict[str, int]:
        """Number of faces whose stored verdict names each persona, without reading the
        predictions. Every id given is a key (0 when none; always 0 for "": verdicts of
        unknown are not indexed by persona, see list_unknown_faces). Labels are not taken
        into account."""

    # ---- unknown faces -----------------------------------------------------
    # An index of the faces is_unknown holds for, maintained by every write that can change
    # it (ingest, predictions, labels, persona deletion and merges, erasure). Hidden faces
    # stay in it (users hide few; readers filter them).
    @abc.abstractmethod
    def list_unknown_faces(self, after: UnknownFaceKey | None, limit: int) -> list[UnknownFaceKey]:
        """Up to `limit` unknown faces in index order (UnknownFaceKey.order) strictly after
        `after` (None: from the newest). Exact: a face that is unknown and stays so while
        pages are read is listed once, in order, however writes interleave; no offsets
        are skipped over."""

    @abc.abstractmethod
    def iter_predictions(self) -> Iterator[PredictionRecord]: ...

    @abc.abstractmethod
    def drop_predictions_of_faces(self, face_ids: Sequence[str]) -> None:
        """Erasure: the faces' verdicts and their rows in the persona and unknown-faces indexes
        (before the face rows go: a backend may need them to find those rows)."""

    @abc.abstractmethod
    def drop_verdicts_naming(self, persona_ids: Sequence[str]) -> None:
        """A deleted persona's verdicts: their faces are unknown until a version trained on what
        remains decides them again (unless a label says otherwise)."""


class ModelRegistry(abc.ABC):
    """Model versions with their artifacts, and training jobs."""

    # ---- model versions --------------------------------------------------
    @abc.abstractmethod
    def put_model_version(self, record: ModelVersionRecord, artifact: bytes) -> ModelVersionRecord:
        """Stores a new version; record.version 0 means "assign the next
        number". The artifact (ONNX bytes) is written before the version row,
        so a version never exists without its artifact."""

    @abc.abstractmethod
    def update_model_version(self, record: ModelVersionRecord) -> None:
        """Updates state/gate_reason/metrics of a stored version."""

    @abc.abstractmethod
    def record_gate_decision(self, version: int, state: int, gate_reason: str) -> bool:
        """Records the gate's decision on a stored version (its state: REJECTED, or CANDIDATE
        held back by a pin; and why) unless the version is WITHDRAWN: a withdrawal (an erasure
        of labels it was trained on) stands even when it lands while the gate decides. One
        conditional write (SQLite: one UPDATE; Cassandra: a lightweight transaction, as the
        withdrawal's own write is). Returns whether it was recorded (False: withdrawn, or
        no such version)."""

    @abc.abstractmethod
    def get_model_version(self, version: int) -> ModelVersionRecord | None: ...

    @abc.abstractmethod
    def get_model_artifact(self, version: int) -> bytes | None: ...

    @abc.abstractmethod
    def delete_model_artifact(self, version: int) -> bool:
        """Deletes a version's ONNX artifact (retention), keeping its row; True if one was deleted."""

    @abc.abstractmethod
    def list_model_versions(self) -> list[ModelVersionRecord]:
        """Newest first."""

    @abc.abstractmethod
    def activate_model_version(self, version: int, gate_reason: str | None = None) -> ModelVersionRecord:
        """Makes it the one active version (the previous one becomes RETIRED), recording
        `gate_reason` (why it went live) so that whoever reads the active version sees it
        (None: the stored reason stays). Raises NotFound, or Withdrawn for a version trained
        on erased labels (see check_activatable). Appends MODEL_VERSION_ACTIVATED."""

    @abc.abstractmethod
    def withdraw_model_versions(self, versions: list[ModelVersionRecord]) -> list[int]:
        """Marks them WITHDRAWN, deletes their artifacts and, if one is active, leaves no
        version active (the classifier then answers unknown until a retrained version is
        activated). Returns their numbers."""

    @abc.abstractmethod
    def active_model_version(self) -> ModelVersionRecord | None: ...

    @abc.abstractmethod
    def restore_model_version(self, record: ModelVersionRecord, artifact: bytes | None) -> None:
        """Upserts an archive's version with its own number, state, reason, metrics and times,
        and its artifact (None: withdrawn or deleted by retention). Its number is claimed, so
        a later put_model_version(version=0) gets a higher one; an ACTIVE record becomes the
        active version. No event."""

    # ---- training jobs ---------------------------------------------------
    @abc.abstractmethod
    def put_training_job(self, job: TrainingJobRecord) -> None:
        """Upserts by job id."""

    @abc.abstractmethod
    def get_training_job(self, job_id: str) -> TrainingJobRecord | None: ...

    @abc.abstractmethod
    def list_training_jobs(self, limit: int) -> list[TrainingJobRecord]:
        """Newest first."""


class EventLog(abc.ABC):
    """The event log every consumer follows."""

    # ---- event log -------------------------------------------------------
    @abc.abstractmethod
    def append_event(self, type: int, subject: str, attributes: dict[str, str] | None = None) -> EventRecord: ...

    @abc.abstractmethod
    def read_events(self, after_cursor: str, limit: int = 1000) -> list[EventRecord]:
        """Events after the cursor in log order ("" = from the beginning). Every appended
        (acknowledged) event is delivered; how often:
        - SQLite: exactly once after any cursor (one sequence, assigned in the append's transaction).
        - Cassandra: exactly once after a cursor this store object handed out (a consumer
          following the log: events landing out of order are delivered late, never dropped;
          an append acknowledged late is stored twice, and readers deliver it once per
          `origin`, whichever copy they meet first). After a cursor from elsewhere (another
          process, a restart) at-least-once: the ~2 s before it may come again, and so may the
          copy of an event before it. Such a consumer dedupes by `origin or cursor` or is
          idempotent."""

    @abc.abstractmethod
    def latest_cursor(self) -> str:
        """Cursor of the newest event ("" if none): read_events after it
        returns only events appended later."""

    @abc.abstractmethod
    def compact_events(self, before: float) -> int:
        """Removes events appended before this time (the retention limit); returns how many
        (Cassandra: by whole minute partitions, so events up to a minute newer may stay
        until the next compaction)."""

    @abc.abstractmethod
    def restore_events(self, events: Sequence[EventRecord]) -> None:
        """Appends an archive's events in the order given (their create_times strictly
        increasing: the restore rule makes them so), with their own type, subject, attributes
        (not stamped again) and times; cursors are this log's own. SQLite: after the log's end
        (inside atomic(), the restore rule counts them in the same transaction). Cassandra:
        at their own times, with ids derived from each event's time and source cursor, so a
        batch written again overwrites itself."""

    @abc.abstractmethod
    def forget_events(self, subjects: set[str], persona_ids: set[str] = frozenset(), since: float = 0.0) -> None:
        """Erasure: deletes every event whose subject is one of these ids or that names one of
        these personas, appended from `since` on (the creation of the oldest thing erased:
        nothing names it before)."""


class WorkShards(abc.ABC):
    """Leases on the shards of shared jobs (re-classification)."""

    # ---- shared work (re-classification shards) ----------------------------
    # A job (e.g. "reclassify-v7") is split into `shards` fixed parts of the faces
    # (shard_of_faces). Replicas claim shards with a lease: a shard is claimed by one
    # replica at a time; a lease that expires (its holder died) lets another take it over;
    # a finished shard is never claimed again, so each shard is done once per job. Times
    # are the caller's clock (tests inject one); replicas' clocks must be in sync (NTP).
    @abc.abstractmethod
    def iter_shard_embeddings(self, shard: int, shards: int, batch_size: int = 8192
                              ) -> Iterator[tuple[list[str], np.ndarray]]:
        """iter_embeddings restricted to one of `shards` disjoint parts that together hold
        every face (Cassandra: token ranges; SQLite: face id ranges)."""

    @abc.abstractmethod
    def shard_of(self, face_id: str, shards: int) -> int:
        """The one of `shards` parts whose iter_shard_embeddings holds this face id."""

    @abc.abstractmethod
    def claim_shard(self, job: str, shards: int, owner: str, lease_until: float, now: float,
                    prefer: Sequence[int] = ()) -> ShardRecord | None:
        """Claims a shard of the job nobody holds: never claimed, or its lease ended before
        `now` and it is not finished; the `prefer`red ones first (those a replica remembers).
        None when every shard is finished or held."""

    @abc.abstractmethod
    def renew_shard(self, job: str, shard: int, owner: str, lease_until: float, faces: int) -> bool:
        """Extends the owner's lease and records its progress; False when the owner lost the
        shard (its lease expired and another replica took it over): it must stop."""

    @abc.abstractmethod
    def finish_shard(self, job: str, shard: int, owner: str, faces: int) -> bool:
        """Marks the owner's shard finished; False when it had lost the shard."""

    @abc.abstractmethod
    def job_shards(self, job: str) -> list[ShardRecord]:
        """The claimed shards of the job (progress of all replicas), by shard number."""

    @abc.abstractmethod
    def complete_job(self, job: str) -> bool:
        """True for exactly one caller per job (whoever announces its end)."""


class MetaStore(abc.ABC):
    """Small durable key/value state."""

    # ---- consumer state --------------------------------------------------
    @abc.abstractmethod
    def get_meta(self, key: str) -> str | None:
        """Small durable key/value state (e.g. a consumer's event cursor)."""

    @abc.abstractmethod
    def set_meta(self, key: str, value: str) -> None: ...

    @abc.abstractmethod
    def swap_meta(self, key: str, change: Callable[[str], str]) -> str:
        """Atomically sets the key to change(current) ("" = absent) and returns the value it
        replaced; of concurrent swaps each sees the value the one before it left (SQLite: one
        write transaction; Cassandra: a lightweight transaction, decided again against the
        value that won a lost race). A key written with swap_meta is written only that way
        (Cassandra: lightweight transactions and plain writes of one cell do not mix)."""


class Store(Catalogue, LabelStore, PredictionStore, ModelRegistry, EventLog, WorkShards, MetaStore):
    """Every role, and the rules over them: what services open (visage.store.open_store)."""

    # ---- lifecycle -------------------------------------------------------
    @abc.abstractmethod
    def migrate(self) -> None:
        """Create or upgrade the schema (versioned, idempotent)."""

    @abc.abstractmethod
    def close(self) -> None: ...

    # ---- the rules (visage.store.domain), over the roles above ---------------
    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """A rule's writes as one unit where the backend has transactions (SQLite: one
        write transaction; the calls inside share it). Cassandra has none: there the rules'
        commit-point order alone keeps a crash from leaving a half-visible change."""
        yield

    def put_label(self, label: LabelRecord) -> None:
        """Upserts the (face, persona) label. A BELONGS label removes the face's BELONGS
        labels for other personas. Raises NotFound for an unknown face or persona. Appends
        FACE_LABELLED."""
        self.put_labels([label])

    def put_labels(self, labels: Sequence[LabelRecord]) -> None:
        """put_label for many labels (BatchLabelFaces, MergePersonas): SQLite writes all or
        none; idempotent, so a batch cut short by a store failure is completed by a retry."""
        from visage.store import domain
        domain.put_labels(self, labels)

    def delete_label(self, face_id: str, persona_id: str) -> bool:
        """True if a label was removed (then appends FACE_UNLABELLED)."""
        from visage.store import domain
        return domain.delete_label(self, face_id, persona_id)

    def add_face(self, face: FaceRecord, persona_id: str = "") -> FaceRecord:
        """Adds a face drawn on a stored image (see visage.store.domain.add_face): NotFound for
        an unknown image or persona, AlreadyExists when it overlaps a stored face by more than
        half. Returns it with its new id and index. Appends FACE_ADDED (then FACE_LABELLED when
        `persona_id` labels it)."""
        from visage.store import domain
        return domain.add_face(self, face, persona_id)

    def delete_image(self, image_id: str) -> Erasure:
        """Erases the image: bytes, faces (crops, embeddings), their labels and predictions,
        earlier events naming the image or its faces; withdraws versions naming a persona
        of a removed label. Raises NotFound (also on a second call); appends ERASED."""
        from visage.store import domain
        return domain.erase_image(self, image_id)

    def delete_face(self, face_id: str) -> Erasure:
        """Erases one face like delete_image erases each of its faces; the image stays
        with face_count lowered. Raises NotFound; appends ERASED."""
        from visage.store import domain
        return domain.erase_face(self, face_id)

    def delete_persona(self, persona_id: str, erase_faces: bool = False) -> Erasure:
        """Removes the persona, its labels, predictions naming it and earlier events naming
        it, and withdraws the versions that name it. With erase_faces, first erases the
        images of the faces labelled as belonging to it (as delete_image). Raises NotFound;
        appends PERSONA_DELETED, then ERASED."""
        from visage.store import domain
        return domain.erase_persona(self, persona_id, erase_faces)

    def check_activatable(self, record: ModelVersionRecord) -> None:
        """Raises Withdrawn when the version may not serve: it was withdrawn, or it was
        trained from labels read before an erasure of labels of a persona it names (a
        training that raced the erasure); such a version is withdrawn here."""
        if record.state == pb.MODEL_STATE_WITHDRAWN:
            raise Withdrawn(f"model version {record.version} was {WITHDRAWN_REASON}; it cannot be activated")
        if withdraw_candidates([record], self.personas_erased_since(record.lineage.get("event_cursor", ""))):
            self.withdraw_model_versions([record])
            raise Withdrawn(f"model version {record.version} was trained before an erasure of labels it "
                            "was trained on; it is withdrawn and cannot be activated")

    def personas_erased_since(self, cursor: str) -> set[str]:
        """Personas whose labels an ERASED event after the cursor removed."""
        erased: set[str] = set()
        while events := self.read_events(cursor, 1000):
            for event in events:
                if event.type == pb.EVENT_TYPE_ERASED:
                    erased.update(filter(None, event.attributes.get("persona_ids", "").split(",")))
            cursor = events[-1].cursor
        return erased
