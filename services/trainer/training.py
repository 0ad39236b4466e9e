"""One training job: read every label, fit, evaluate, export to ONNX, assert
that the model honours every label, store the version and let the gate decide
(decisions.py): activate it, hold it (a version is pinned) or reject it.

Crash safety: a version row is written (with its artifact, in one store call)
only after the model is complete and checked, as an undecided CANDIDATE;
the decision is a separate, last step. A kill -9 anywhere leaves the previous
version active and at worst an undecided candidate, which the restarted
trainer decides before any new job (`decide_undecided`); the event cursor is
advanced only after a job ends, so a restarted trainer sees the same label
events again and retrains."""
from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from visage import model as modelling
from visage.config import TrainerSettings  # VISAGE_TRAIN_*, VISAGE_GATE_MARGIN, VISAGE_MODEL_RETENTION
from visage.store.base import Store
from visage.store.records import ModelVersionRecord, TrainingJobRecord, now
from visage.v1 import resources_pb2 as pb
from visage_trainer import decisions

log = logging.getLogger(__name__)

READ_CHUNK_FACES = 2000  # faces fetched per store call: bounds memory while reading
PROGRESS_INTERVAL_SECONDS = 0.25  # at most ~4 progress writes/events per second
TERMINAL_PHASES = (pb.TRAINING_PHASE_SUCCEEDED, pb.TRAINING_PHASE_FAILED)


class JobReporter:
    """Keeps a job's record current in the store, in the event log
    (TRAINING_PROGRESS, throttled) and for watchers (publish)."""

    def __init__(self, store: Store, job: TrainingJobRecord, publish: Callable[[TrainingJobRecord], None]):
        self.store, self.job, self._publish = store, job, publish
        self._last_write = 0.0

    def update(self, force: bool = False, **changes) -> None:
        phase_changed = "phase" in changes and changes["phase"] != self.job.phase
        self.job = replace(self.job, update_time=now(), **changes)
        if not (force or phase_changed) and time.monotonic() - self._last_write < PROGRESS_INTERVAL_SECONDS:
            return
        self._last_write = time.monotonic()
        self.store.put_training_job(self.job)
        attributes = {"job_id": self.job.job_id, "phase": pb.TrainingPhase.Name(self.job.phase),
                      "done": str(self.job.done), "total": str(self.job.total)}
        if self.job.phase in TERMINAL_PHASES:  # what came of it, so a watcher never guesses "it went live"
            attributes.update(model_version=str(self.job.model_version), activated=str(self.job.activated).lower(),
                              message=self.job.message[:500])
        self.store.append_event(pb.EVENT_TYPE_TRAINING_PROGRESS, self.job.job_id, attributes)
        self._publish(self.job)


@dataclass
class LabelSet:
    belonging: list[tuple[str, str]]  # (face id, persona id)
    rejected: list[tuple[str, str]]
    sha256: str
    times: dict[tuple[str, str], float]  # (face id, persona id) -> when the label was given

    @property
    def count(self) -> int:
        return len(self.belonging) + len(self.rejected)


def read_label_set(store: Store) -> LabelSet:
    """Every label, and a SHA-256 over the sorted (face, persona, verdict) triples."""
    records = sorted((label.face_id, label.persona_id, label.verdict, label.create_time)
                     for label in store.iter_labels())
    digest = hashlib.sha256()
    belonging, rejected, times = [], [], {}
    for face_id, persona_id, verdict, created in records:
        digest.update(f"{face_id}\t{persona_id}\t{verdict}\n".encode())
        (belonging if verdict == pb.VERDICT_BELONGS else rejected).append((face_id, persona_id))
        times[face_id, persona_id] = created
    return LabelSet(belonging, rejected, digest.hexdigest(), times)


def stream_faces(store: Store, pairs: list[tuple[str, str]], on_chunk: Callable[[list[str], list[str], np.ndarray], None],
                 on_progress: Callable[[int], None]) -> int:
    """Fetches the labelled faces in chunks; labels of faces that are gone are skipped."""
    read = 0
    for start in range(0, len(pairs), READ_CHUNK_FACES):
        chunk = dict(pairs[start:start + READ_CHUNK_FACES])
        faces = store.get_faces(chunk)
        if faces:
            on_chunk([f.face_id for f in faces], [chunk[f.face_id] for f in faces],
                     np.stack([f.embedding for f in faces]).astype(np.float32))
        read += len(faces)
        on_progress(min(start + READ_CHUNK_FACES, len(pairs)))
    return read


class NothingToTrain(Exception):
    """An event-triggered job found nothing new (ends SUCCEEDED, no version)."""


def run_job(store: Store, reporter: JobReporter, settings: TrainerSettings, force: bool) -> str:
    """Runs the job to its end (never raises); returns the event cursor the
    job's labels reflect ("" when it failed before reading)."""
    started = time.perf_counter()
    cursor = store.latest_cursor()  # read before the labels: everything up to it is in them
    try:
        _train(store, reporter, settings, force, cursor, started)
    except NothingToTrain as nothing:
        reporter.update(force=True, phase=pb.TRAINING_PHASE_SUCCEEDED, message=str(nothing))
    except Exception as error:  # a failed job is reported, the trainer carries on
        log.exception("training job %s failed", reporter.job.job_id)
        reporter.update(force=True, phase=pb.TRAINING_PHASE_FAILED, message=f"{type(error).__name__}: {error}")
        return ""
    return cursor


def _train(store: Store, reporter: JobReporter, settings: TrainerSettings, force: bool, cursor: str,
           started: float) -> None:
    reporter.update(phase=pb.TRAINING_PHASE_READING, done=0, total=0)
    labels = read_label_set(store)
    active = store.active_model_version()
    _check_worth_training(store, labels, active, force)
    accumulator = accumulate(store, labels, reporter)
    checks = decisions.check_set(store, labels, accumulator, active.create_time if active else 0.0)

    reporter.update(phase=pb.TRAINING_PHASE_FITTING, done=0, total=1)
    trained = modelling.fit_and_evaluate(accumulator, on_phase=lambda _: reporter.update(
        phase=pb.TRAINING_PHASE_EVALUATING, done=0, total=1), strangers=checks.strangers)
    reporter.update(phase=pb.TRAINING_PHASE_EXPORTING, done=0, total=1, metrics=trained.metrics)
    artifact = modelling.export_onnx(trained.model)
    record = ModelVersionRecord(version=0, state=pb.MODEL_STATE_CANDIDATE, algorithm=modelling.ALGORITHM,
                                unknown_threshold=trained.unknown_threshold, persona_ids=trained.persona_ids,
                                metrics=trained.metrics, lineage={}, gate_reason=decisions.PENDING)
    # Labels are facts: a version that contradicts one is never stored.
    problems = decisions.unhonoured_labels(modelling.Predictor.load(record, artifact), checks,
                                           decisions.persona_names(store))
    if problems:
        raise LabelsNotHonoured(f"{len(problems)} label(s) would not be honoured; no version stored: "
                                + "; ".join(problems[:5]))

    reporter.update(phase=pb.TRAINING_PHASE_STORING, done=0, total=1)
    record.lineage = {"event_cursor": cursor, "label_count": labels.count, "label_set_sha256": labels.sha256,
                      "training_seconds": round(time.perf_counter() - started, 3),
                      "library_versions": modelling.library_versions(),
                      "parent_version": active.version if active else 0}
    record = store.put_model_version(record, artifact)  # a crash from here on is recovered at start
    activated, reason = decisions.decide(store, record, checks, settings.gate_margin, labels_asserted=True)
    decisions.apply_retention(store, settings.retention)
    reporter.update(force=True, phase=pb.TRAINING_PHASE_SUCCEEDED, done=1, total=1, model_version=record.version,
                    activated=activated, message=f"version {record.version}: {reason}")


def accumulate(store: Store, labels: LabelSet, reporter: JobReporter | None = None) -> modelling.LabelAccumulator:
    """Streams every labelled face into the training input (progress on the reporter)."""
    report = reporter.update if reporter else lambda **_: None
    accumulator = modelling.LabelAccumulator(len(labels.belonging))
    total = len(labels.belonging) + len(labels.rejected)
    faces_read = stream_faces(store, labels.belonging, accumulator.add_belonging,
                              lambda done: report(done=done, total=total, faces_read=done))
    faces_read += stream_faces(store, labels.rejected, lambda ids, personas, x: accumulator.add_rejected(
        personas, x, ids), lambda done: report(done=len(labels.belonging) + done, total=total))
    report(faces_read=faces_read, done=total, total=total)
    return accumulator


class LabelsNotHonoured(Exception):
    """The fitted model contradicts a label (e.g. two labels contradict each other)."""


def decide_undecided(store: Store, settings: TrainerSettings) -> list[str]:
    """Decides candidates a crash left between storing and activation (at
    start, before any job); returns what was decided, in words."""
    decided = []
    for record in decisions.undecided_candidates(store):
        active = store.active_model_version()
        labels = read_label_set(store)
        checks = decisions.check_set(store, labels, accumulate(store, labels), active.create_time if active else 0.0)
        activated, reason = decisions.decide(store, record, checks, settings.gate_margin)
        decided.append(f"version {record.version} {'activated' if activated else 'not activated'}: {reason}")
    return decided


def _check_worth_training(store: Store, labels: LabelSet, active: ModelVersionRecord | None, force: bool) -> None:
    if not labels.belonging and active is None:
        message = "nothing to train: no face is labelled as belonging to a persona yet"
        raise ValueError(message) if force else NothingToTrain(message)
    if force:
        return
    versions = store.list_model_versions()
    if versions and versions[0].lineage.get("label_set_sha256") == labels.sha256:
        raise NothingToTrain(f"labels unchanged since version {versions[0].version}; nothing to train")
