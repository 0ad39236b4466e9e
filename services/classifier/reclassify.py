"""Re-classification: every unlabelled face in the store is evaluated by the
active model version, with progress streamed to every watcher. Only verdicts
that change are written (store.put_prediction_columns changed_only: another
persona, or a confidence moved by more than PREDICTION_TOLERANCE); the others
stand as stored. When a run has covered every shard, RECLASSIFIED_VERSION_KEY
names its version: every stored verdict is then that version's. A replica
remembers the shards it passed over: after an activation it predicts again only
the faces whose verdict the new version can change (incremental.py).

One run at a time per process. A second request for the same version joins
the running run (watchers share it); a request for a newer version supersedes
it: the old run stops at its next batch, the new one starts only after it has
stopped (so stale predictions are never written after fresh ones), and
watchers of the old run follow on to the new one.

Cancelling a watcher only stops that watcher's stream: the run itself keeps
going, because other watchers (and the automatic run after an activation)
rely on it and half-written predictions would mix versions.
"""
from __future__ import annotations

import itertools
import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from visage import metrics
from visage.config import ClassifierSettings
from visage.model import Predictor
from visage.store.base import RECLASSIFIED_VERSION_KEY, Store
from visage.store.records import PredictionRecord, ShardRecord
from visage.v1 import classify_pb2
from visage.v1 import resources_pb2 as pb
from visage_classifier.incremental import ReclassifyMemory, ShardPass
from visage_classifier.models import ActiveModel, ModelLoadError

log = logging.getLogger(__name__)

BATCH_ROWS = ClassifierSettings.batch_rows  # 8192 (VISAGE_RECLASSIFY_BATCH_ROWS)
# Parts of one version's re-classification that replicas claim (a few per replica): 64.
SHARDS = ClassifierSettings.shards
LEASE_SECONDS = ClassifierSettings.lease_seconds  # 60 s: a shard whose holder has not renewed for this long is taken over
PROGRESS_READ_SECONDS = 0.5  # how often a replica re-reads the others' progress while it works
EVENT_INTERVAL_SECONDS = 0.25  # progress events: at most ~4 per second

RUNNING = classify_pb2.RECLASSIFY_STATE_RUNNING
SUCCEEDED = classify_pb2.RECLASSIFY_STATE_SUCCEEDED
FAILED = classify_pb2.RECLASSIFY_STATE_FAILED
NO_MODEL = classify_pb2.RECLASSIFY_STATE_NO_MODEL
TERMINAL = {SUCCEEDED, FAILED, NO_MODEL}


def prefetched(batches: Iterator, depth: int = 2) -> Iterator:
    """Reads the next batches on a helper thread while the caller predicts and
    writes the current one (SQLite/Cassandra reads release the GIL)."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def reader() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        buffer.put(batch, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(done)
        except BaseException as error:  # handed to the consumer, raised there
            buffer.put(error)

    thread = threading.Thread(target=reader, name="reclassify-reader", daemon=True)
    thread.start()
    try:
        while (item := buffer.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


class BackgroundWriter:
    """Writes batches on a helper thread so the store's single writer is kept
    busy while the next batch is read and predicted (writes are the slowest
    step: an upsert touches the table and its index). At most `depth`
    batches wait; a write error is raised in the caller at its next submit
    or at close. A batch is whatever `write` takes; `rows` counts its faces."""

    def __init__(self, write: Callable[[object], None], on_written: Callable[[int], None], depth: int = 2):
        self._write = write
        self._on_written = on_written
        self._pending: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="reclassify-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while (item := self._pending.get()) is not None:
            batch, rows = item
            if self._error is None:
                try:
                    self._write(batch)
                    self._on_written(rows)
                except BaseException as error:  # handed to the producer
                    self._error = error

    def submit(self, batch: object, rows: int) -> None:
        self._raise_pending_error()
        self._pending.put((batch, rows))

    def close(self) -> None:
        self._pending.put(None)
        self._thread.join()
        self._raise_pending_error()

    def _raise_pending_error(self) -> None:
        if self._error is not None:
            raise self._error


def belonging_face_ids(store: Store) -> set[str]:
    """Faces a user labelled as someone: their label wins, they get no prediction."""
    return {label.face_id for label in store.iter_labels() if label.verdict == pb.VERDICT_BELONGS}


def known_or_unknown(persona_ids: list[str], known_personas: set[str]) -> list[str]:
    """A persona deleted after training is answered as unknown, never as a dangling id."""
    return [persona_id if persona_id in known_personas else "" for persona_id in persona_ids]


def prediction_records(face_ids: list[str], persona_ids: list[str], confidences: np.ndarray, version: int,
                       known_personas: set[str], created: float) -> list[PredictionRecord]:
    """Records for put_predictions (a few faces at a time; a run writes PredictionColumns)."""
    return [PredictionRecord(face_id, persona_id, confidence, version, created) for face_id, persona_id, confidence
            in zip(face_ids, known_or_unknown(persona_ids, known_personas), confidences.tolist())]


@dataclass(frozen=True)
class PredictionColumns:
    """One batch of a run's predictions, as put_prediction_columns takes them: no
    record object per face (at 100k faces/s those cost as much as the write)."""
    face_ids: list[str]
    persona_ids: list[str]
    confidences: np.ndarray
    model_version: int
    create_time: float

    def write_to(self, store: Store) -> int:
        """Writes the verdicts that changed; returns how many."""
        written = store.put_prediction_columns(self.face_ids, self.persona_ids, self.confidences, self.model_version,
                                               self.create_time, changed_only=True)
        metrics.PREDICTIONS_WRITTEN.inc(written)
        return written


def shared_job(version: int, generation: int = 0) -> str:
    """The job all replicas share to re-classify with a newly activated version. A version
    activated again later (a rollback, a pin) gets a job of the next generation: its
    earlier job is finished, and the verdicts stored since are other versions'."""
    return f"reclassify-v{version}" + (f"-g{generation}" if generation else "")


def replica_owner() -> str:
    """This process's name as a shard owner: unique among replicas and restarts."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class SharedWork:
    """How a run shares its version's re-classification with other replicas: the faces
    split into `shards`, claimed through the store with leases of `lease_seconds` on
    `clock` (injectable: tests expire leases without sleeping); a replica with nothing
    left to claim polls the others' progress every `poll_seconds` until all are done."""
    shards: int = SHARDS
    lease_seconds: float = LEASE_SECONDS
    poll_seconds: float = 0.5
    owner: str = field(default_factory=replica_owner)
    clock: Callable[[], float] = time.time

    @classmethod
    def from_env(cls) -> "SharedWork":
        """VISAGE_RECLASSIFY_SHARDS / _LEASE_SECONDS (every replica must use the same shards)."""
        shards, lease = ClassifierSettings.read("shards"), ClassifierSettings.read("lease_seconds")
        if shards < 1 or lease <= 0:
            raise ValueError(f"VISAGE_RECLASSIFY_SHARDS ({shards}) and _LEASE_SECONDS ({lease}) must be positive")
        return cls(shards=shards, lease_seconds=lease)


@dataclass(frozen=True)
class _ShardBatch(PredictionColumns):
    """A batch of predictions of one shard."""
    shard: int = -1


@dataclass(frozen=True)
class _ShardEnd:
    """Every batch of the shard before this one is written: it can be finished. `carried`:
    its unlabelled faces whose verdicts stand unpredicted (an incremental pass)."""
    shard_pass: ShardPass
    carried: int = 0

    @property
    def shard(self) -> int:
        return self.shard_pass.shard


class _ShardProgress:
    """A run's shards in flight on this replica: faces written per shard, leases renewed
    (at most every quarter lease, with the faces written so far: other replicas' progress
    reads them), shards lost to a takeover (their remaining batches are skipped)."""

    def __init__(self, run: "Run", total: int, started: float):
        self._run, self._total, self._started = run, total, started
        self._written: dict[int, int] = {}
        self._renewed: dict[int, float] = {}
        self._lost: set[int] = set()
        self._recorded: list[ShardRecord] = []
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def claimed(self, shard: int, now: float) -> None:  # on the reading thread; the rest on the writer's
        with self._lock:
            self._written[shard], self._renewed[shard] = 0, now

    def lost(self, shard: int) -> bool:
        return shard in self._lost

    def written(self, rows: int) -> None:
        """The writer wrote a batch (or ended a shard, rows 0): renew leases that are due."""
        run, work = self._run, self._run.work
        metrics.RECLASSIFIED_FACES.inc(rows)
        now = work.clock()
        with self._lock:
            due = [s for s, renewed in self._renewed.items() if now - renewed >= work.lease_seconds / 4]
        for shard in due:
            self._renewed[shard] = now
            if not run.store.renew_shard(run.job, shard, work.owner, now + work.lease_seconds, self._written[shard]):
                self._lose(shard)
        self._refresh_recorded()
        run._report_shared(self._recorded, self._unrecorded(), self._total, self._started)

    def add(self, shard: int, rows: int) -> None:
        with self._lock:
            self._written[shard] = self._written.get(shard, 0) + rows

    def finish(self, end: _ShardEnd) -> bool:
        """Whether the shard is finished by this replica."""
        run = self._run
        renewed = self._renewed.pop(end.shard, None)
        finished = renewed is not None and end.shard not in self._lost and not run._stop.is_set()
        if finished and not run.store.finish_shard(run.job, end.shard, run.work.owner, self._written[end.shard]):
            self._lose(end.shard)
            finished = False
        with self._lock:
            self._written.pop(end.shard, None)
        self._refresh_recorded()
        return finished

    def _refresh_recorded(self) -> None:
        """Re-reads every replica's recorded progress, at most every PROGRESS_READ_SECONDS."""
        if time.monotonic() - self._read_at >= PROGRESS_READ_SECONDS:
            self._recorded = self._run.store.job_shards(self._run.job)
            self._read_at = time.monotonic()

    def _lose(self, shard: int) -> None:
        log.warning("re-classification shard %d of %s was taken over by another replica", shard, self._run.job)
        self._lost.add(shard)
        self._renewed.pop(shard, None)

    def _unrecorded(self) -> int:
        """Faces written in shards in flight beyond what their rows record."""
        recorded = {s.shard: s.faces for s in self._recorded if s.owner == self._run.work.owner and not s.done}
        with self._lock:
            return sum(max(0, written - recorded.get(shard, 0)) for shard, written in self._written.items())


class Run:
    """One re-classification with one Predictor; its progress is a snapshot
    that watchers wait on (they always get the newest, never a backlog)."""

    def __init__(self, store: Store, predictor: Predictor | None, batch_rows: int = BATCH_ROWS,
                 work: SharedWork | None = None, job: str = "", memory: ReclassifyMemory | None = None,
                 incremental: bool = False):
        self.store = store
        self.predictor = predictor
        self.version = predictor.version if predictor else 0
        self.batch_rows = batch_rows
        self.work = work or SharedWork()
        self.job = job or shared_job(self.version)
        # `incremental`: shards this replica remembers are passed over by their due faces only
        # (see incremental.py); every pass leaves what it computed in `memory` either way.
        self.memory = memory or ReclassifyMemory(capacity_faces=0)
        self.incremental = incremental
        self.successor: Run | None = None
        self._changed = threading.Condition()
        self._sequence = 0
        self._progress = classify_pb2.ReclassifyProgress(model_version=self.version, state=RUNNING)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_event_time = 0.0

    @classmethod
    def finished_with(cls, store: Store, state: int, message: str, version: int = 0) -> "Run":
        """A run that ends before it starts (no model, model failed to load)."""
        run = cls(store, None)
        run.version = version
        run._publish(classify_pb2.ReclassifyProgress(model_version=version, state=state, message=message))
        return run

    # ---- watchers --------------------------------------------------------
    @property
    def finished(self) -> bool:
        """Its final state is out (the thread may still be appending the last event)."""
        return self._progress.state in TERMINAL

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait_update(self, seen: int, timeout: float) -> tuple[int, classify_pb2.ReclassifyProgress]:
        """The newest (sequence, progress), waiting up to timeout for one newer than seen."""
        with self._changed:
            self._changed.wait_for(lambda: self._sequence != seen or self.successor is not None, timeout)
            return self._sequence, self._progress

    # ---- lifecycle -------------------------------------------------------
    def start(self, after: "Run | None" = None) -> None:
        self._thread = threading.Thread(target=self._execute, args=(after,), name=f"reclassify-v{self.version}",
                                        daemon=True)
        self._thread.start()

    def supersede(self, successor: "Run") -> None:
        self.successor = successor
        self._stop.set()
        with self._changed:
            self._changed.notify_all()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _execute(self, after: "Run | None") -> None:
        if after is not None:
            after.join()  # its last batch must land before ours start
        started = time.monotonic()
        try:
            done = self._classify_all(started)
            if self._stop.is_set():
                log.info("re-classification with version %d superseded after %d faces", self.version, done)
                return
            if self.store.complete_job(self.job):  # one replica announces the shared run's end
                self.store.append_event(pb.EVENT_TYPE_PREDICTIONS_WRITTEN, str(self.version),
                                        {"model_version": str(self.version), "count": str(done)})
            self.store.set_meta(RECLASSIFIED_VERSION_KEY, str(self.version))
            elapsed = max(time.monotonic() - started, 1e-9)
            self._report(SUCCEEDED, done, done, done / elapsed, 0.0,
                         f"{done} faces re-classified with version {self.version} in {elapsed:.2f}s")
        except Exception as error:  # reported to every watcher and the event log, never silent
            log.exception("re-classification with version %d failed", self.version)
            progress = self._progress
            self._report(FAILED, progress.done, progress.total, progress.faces_per_second, 0.0,
                         f"re-classification failed: {error}")

    def _classify_all(self, started: float) -> int:
        """Works on shards of this version's job until every shard is finished (by this replica
        or others); returns the faces re-classified by all of them."""
        labelled = belonging_face_ids(self.store)
        known_personas = {persona.persona_id for persona in self.store.list_personas()}
        total = self._faces_to_classify(labelled)
        self._report(RUNNING, 0, total, 0.0, 0.0, f"re-classifying with version {self.version}")
        while not self._stop.is_set():
            self._classify_claimed_shards(_ShardProgress(self, total, started), labelled, known_personas)
            shards = self.store.job_shards(self.job)
            if len(shards) == self.work.shards and all(shard.done for shard in shards):
                return sum(shard.faces for shard in shards)
            self._report_shared(shards, 0, total, started)  # others hold the rest: follow their progress
            self._stop.wait(self.work.poll_seconds)  # then claim again: a holder's lease may have ended
        return 0

    def _faces_to_classify(self, labelled: set[str]) -> int:
        """The unlabelled faces, for progress and its ETA: counted in the store or, by an
        incremental run of a replica that remembers shards, extrapolated from them (a count
        costs seconds at a million faces). The final count is exact either way."""
        remembered = self.memory.estimated_faces(self.work.shards) if self.incremental else None
        faces = remembered if remembered is not None else self.store.count_faces()
        return max(faces - len(labelled), 0)

    def _claimed_passes(self, progress: "_ShardProgress", labelled: set[str], known_personas: set[str]
                        ) -> Iterator[tuple[ShardPass, list[str], np.ndarray | None]]:
        """(pass, face_ids, matrix) of every shard this replica can claim, one after another,
        and (pass, [], None) after each shard's last batch. Runs on the prefetch thread, so
        the next shard is claimed and read while the last one's batches are written."""
        work = self.work
        writer = f"{work.owner} {self.job}"
        while not self._stop.is_set():
            now = work.clock()
            claim = self.store.claim_shard(self.job, work.shards, work.owner, now + work.lease_seconds, now,
                                           prefer=self.memory.remembered(work.shards))
            if claim is None:
                return
            metrics.SHARDS_CLAIMED.inc()
            progress.claimed(claim.shard, now)
            shard_pass = self.memory.open_pass(self.store, writer, work.shards, claim.shard, self.predictor.parameters,
                                               labelled, known_personas, self.incremental)
            for face_ids, matrix in shard_pass.batches(self.store, work.shards, self.batch_rows):
                if self._stop.is_set() or progress.lost(claim.shard):
                    break
                yield shard_pass, face_ids, matrix
            yield shard_pass, [], None

    def _classify_claimed_shards(self, progress: "_ShardProgress", labelled: set[str],
                                 known_personas: set[str]) -> None:
        """Predicts the shards it claims; one writer for all of them, so reading, predicting and
        writing overlap across shard boundaries. A shard is finished after its last write."""
        def write(batch) -> None:
            if isinstance(batch, _ShardBatch):
                batch.write_to(self.store)
                progress.add(batch.shard, len(batch.face_ids))
                return
            progress.add(batch.shard, batch.carried)  # the end of a shard
            finished = progress.finish(batch)
            self.memory.close_pass(self.store, batch.shard_pass, finished, self.predictor.parameters, labelled)

        writer = BackgroundWriter(write, progress.written)
        personas = len(self.predictor.persona_ids)
        try:
            for shard_pass, face_ids, matrix in prefetched(self._claimed_passes(progress, labelled, known_personas)):
                if self._stop.is_set():
                    break
                shard = shard_pass.shard
                if matrix is None:  # a run stopped mid-shard never gets here: its pass is forgotten unclosed
                    carried = shard_pass.carried_faces()
                    writer.submit(_ShardEnd(shard_pass, carried), carried)
                    continue
                nearest, distance, limit = self.predictor.nearest(matrix)
                metrics.FACES_PREDICTED.inc(len(matrix))
                shard_pass.answered(nearest, distance, personas)
                if not labelled.isdisjoint(face_ids):  # most batches hold no labelled face: one C-level check
                    keep = np.fromiter((face_id not in labelled for face_id in face_ids), dtype=bool,
                                       count=len(face_ids))
                    face_ids = [face_id for face_id, kept in zip(face_ids, keep) if kept]
                    nearest, distance, limit = nearest[keep], distance[keep], limit[keep]
                persona_ids, confidences = self.predictor.verdicts(nearest, distance, limit)
                writer.submit(_ShardBatch(face_ids, known_or_unknown(persona_ids, known_personas),
                                          confidences, self.version, time.time(), shard=shard),
                              len(face_ids))
        finally:
            writer.close()

    def _report_shared(self, shards: list[ShardRecord], own_in_flight: int, total: int, started: float) -> None:
        """Progress of all replicas: the faces each shard recorded (at renewals and at its end),
        plus this replica's faces written since it last recorded them."""
        done = sum(shard.faces for shard in shards) + own_in_flight
        total = max(total, done)  # faces ingested meanwhile
        rate = done / max(time.monotonic() - started, 1e-9)
        if done != self._progress.done or total != self._progress.total:
            self._report(RUNNING, done, total, rate, (total - done) / rate if rate else 0.0, "")


    # ---- progress --------------------------------------------------------
    def _report(self, state: int, done: int, total: int, rate: float, eta: float, message: str) -> None:
        progress = classify_pb2.ReclassifyProgress(
            model_version=self.version, state=state, done=done, total=total,
            faces_per_second=rate, eta_seconds=eta, message=message or self._progress.message)
        self._publish(progress)
        metrics.RECLASSIFY_RATE.set(rate if state == RUNNING else 0.0)
        self._append_progress_event(progress)

    def _publish(self, progress: classify_pb2.ReclassifyProgress) -> None:
        with self._changed:
            self._progress = progress
            self._sequence += 1
            self._changed.notify_all()

    def _append_progress_event(self, progress: classify_pb2.ReclassifyProgress) -> None:
        """Throttled so a fast run does not flood the log; first and last always go."""
        now = time.monotonic()
        first = self._last_event_time == 0.0
        if not (first or progress.state in TERMINAL or now - self._last_event_time >= EVENT_INTERVAL_SECONDS):
            return
        self._last_event_time = now
        self.store.append_event(pb.EVENT_TYPE_RECLASSIFY_PROGRESS, str(self.version), {
            "model_version": str(progress.model_version), "done": str(progress.done), "total": str(progress.total),
            "faces_per_second": f"{progress.faces_per_second:.1f}", "eta_seconds": f"{progress.eta_seconds:.1f}",
            "state": classify_pb2.ReclassifyState.Name(progress.state),
        })


class Reclassifier:
    """Starts runs, or hands out the running one to join."""

    def __init__(self, store: Store, models: ActiveModel, batch_rows: int = BATCH_ROWS,
                 work: SharedWork | None = None, memory: ReclassifyMemory | None = None):
        self._store = store
        self._models = models
        self._batch_rows = batch_rows
        self._work = work or SharedWork()
        self._memory = memory or ReclassifyMemory()
        self._lock = threading.Lock()
        self._run: Run | None = None

    def current_run(self) -> Run | None:
        return self._run

    def start_or_join(self, shared: bool = False) -> Run:
        """Joins the running run of the active version, or starts one: `shared`, the
        version's one job that every replica works on (after an activation); otherwise a
        job of its own (an operator's request: everything again, even if done before)."""
        with self._lock:
            try:
                predictor = self._models.refresh()
            except ModelLoadError as error:
                active = self._store.active_model_version()
                return Run.finished_with(self._store, FAILED, str(error), active.version if active else 0)
            if predictor is None:
                return Run.finished_with(self._store, NO_MODEL, "no model version is active yet")
            running = self._run
            if (running is not None and running.is_alive() and not running.finished
                    and running.version == predictor.version):
                return running  # join: a finished run is never joined, its answer may be stale
            job = (self._unfinished_shared_job(predictor.version) if shared
                   else f"{shared_job(predictor.version)}-{uuid.uuid4().hex[:8]}")
            # An operator's run evaluates every face again (a check of what incremental runs kept).
            run = Run(self._store, predictor, self._batch_rows, self._work, job, self._memory, incremental=shared)
            if running is not None and running.is_alive():
                running.supersede(run)
            run.start(after=running)
            self._run = run
            return run

    def _unfinished_shared_job(self, version: int) -> str:
        """The version's first shared job not finished yet (callers checked is_up_to_date:
        the store's verdicts are not this version's, so a finished job is an earlier activation's)."""
        for generation in itertools.count():
            job = shared_job(version, generation)
            shards = self._store.job_shards(job)
            if not (len(shards) == self._work.shards and all(shard.done for shard in shards)):
                return job
        raise AssertionError("unreachable")

    def is_up_to_date(self) -> bool:
        """True when the active version's run already completed (at-least-once
        events may announce the same activation twice)."""
        active = self._store.active_model_version()
        held = self._models.current()
        return (active is not None and held is not None and held.version == active.version
                and self._store.get_meta(RECLASSIFIED_VERSION_KEY) == str(active.version))

    def stop(self) -> None:
        run = self._run
        if run is not None:
            run._stop.set()
            run.join(timeout=10)


def follow(run: Run, is_active: Callable[[], bool], poll_seconds: float = 0.5
           ) -> Iterator[classify_pb2.ReclassifyProgress]:
    """Yields a run's progress until it ends (following it to the run that
    superseded it), or until the watcher goes away."""
    seen = -1
    while is_active():
        if run.successor is not None:  # superseded: wait for it to stop, then watch the new run
            run.join(poll_seconds)
            if not run.is_alive():
                run, seen = run.successor, -1
            continue
        sequence, progress = run.wait_update(seen, poll_seconds)
        if run.successor is not None:
            continue
        if sequence != seen:
            seen = sequence
            yield progress
        if progress.state in TERMINAL:
            return
