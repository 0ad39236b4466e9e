"""TrainService and the trainer that runs behind it.

Exactly one trainer runs per deployment (one replica; `make run` starts one):
jobs run one at a time on one worker thread, and the event cursor in the
store's meta table belongs to it. Two trainers would not corrupt anything
(versions get distinct numbers) but would train twice and race activations.

Event-driven training: a follower thread reads the event log from the
trainer's durable cursor; label and persona events arm a debounce timer, and
once the log has been quiet for `debounce_seconds` one job trains on every
label. The cursor advances only after a job ends, so a crash mid-training
replays the events on restart and trains again."""
from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import deque

import grpc

from visage import convert, nonblocking, paging, tracing
from visage.config import Config
from visage.errors import InvalidArgument, answer_errors, end_stream, register_status
from visage.guard import ElasticThreadPool
from visage.nonblocking import Stream
from visage.server import SERVICE_NAMES, RunningService, build_server, open_stream
from visage.store.base import NotFound, Store
from visage.store.records import TrainingJobRecord
from visage.v1 import resources_pb2 as pb
from visage.v1 import train_pb2, train_pb2_grpc
from visage_trainer import decisions
from visage_trainer.training import TERMINAL_PHASES, JobReporter, TrainerSettings, decide_undecided, run_job

log = logging.getLogger(__name__)

register_status(decisions.ModelGone, grpc.StatusCode.FAILED_PRECONDITION)  # activating a version retention deleted

CURSOR_META_KEY = "trainer.event_cursor"
TRIGGER_EVENTS = {pb.EVENT_TYPE_FACE_LABELLED, pb.EVENT_TYPE_FACE_UNLABELLED, pb.EVENT_TYPE_PERSONA_CREATED,
                  pb.EVENT_TYPE_PERSONA_RENAMED, pb.EVENT_TYPE_PERSONA_DELETED, pb.EVENT_TYPE_ERASED}
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 20, 100
NO_ACTIVE_VERSION = "no model version is active yet: label some faces first"
DELIVERY_THREADS = 4  # watch deliveries running at once, all watches together (they end when idle)


class JobBoard:
    """Fans job updates out to watch streams (JobWatch: no thread while idle)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._watches: set[JobWatch] = set()
        self.closed = threading.Event()
        self.deliveries = ElasticThreadPool(DELIVERY_THREADS, thread_name_prefix="watch_jobs")

    def publish(self, job: TrainingJobRecord) -> None:
        with self._lock:
            watches = list(self._watches)
        for watch in watches:
            watch.push(job)

    def subscribe(self, job_id: str, send, finish) -> "JobWatch":
        """A watch of every job (job_id empty) or one; it sends nothing before `start`."""
        watch = JobWatch(self, job_id, send, finish)
        with self._lock:
            self._watches.add(watch)
        return watch

    def unsubscribe(self, watch: "JobWatch") -> None:
        with self._lock:
            self._watches.discard(watch)

    def close(self) -> None:
        """Ends every watch (OK) once it sent what it has."""
        self.closed.set()
        with self._lock:
            watches = list(self._watches)
        for watch in watches:
            watch.wake()


class JobWatch(Stream):
    """One WatchTrainingJobs stream: the updates published since it subscribed, sent
    in order after the job's stored snapshot (`start`) by a delivery at a time
    (visage.nonblocking.Stream); an update older than one sent is skipped, so a job
    never goes back a phase on the watcher's screen."""

    def __init__(self, board: JobBoard, job_id: str, send, finish) -> None:
        super().__init__(board.deliveries, send, finish)
        self._board, self._job_id = board, job_id
        self._pending_lock = threading.Lock()
        self._pending: deque[TrainingJobRecord] = deque()
        self._started = False
        self._sent: dict[str, float] = {}  # job id -> update_time of the newest update sent

    def push(self, job: TrainingJobRecord) -> None:
        if self._job_id and job.job_id != self._job_id:
            return
        with self._pending_lock:
            self._pending.append(job)
            started = self._started
        if started:
            self.wake()

    def start(self, snapshot: TrainingJobRecord | None = None) -> None:
        """Sends `snapshot` (the watched job as stored, read after subscribing), then the updates."""
        with self._pending_lock:
            if snapshot is not None:
                self._pending.appendleft(snapshot)
            self._started = True
        self.wake()

    def close(self) -> None:
        super().close()
        self._board.unsubscribe(self)

    def deliver(self) -> None:
        while (job := self._next()) is not None:
            if job.update_time <= self._sent.get(job.job_id, float("-inf")):
                continue
            self._sent[job.job_id] = job.update_time
            self.send(job)
            if self._job_id and job.phase in TERMINAL_PHASES:
                self.end()  # the watched job is over: OK
                return
        with self._pending_lock:
            started = self._started
        if started and self._board.closed.is_set():  # the trainer stops: OK, once the snapshot went
            self.end()

    def _next(self) -> TrainingJobRecord | None:
        with self._pending_lock:
            return self._pending.popleft() if self._started and self._pending else None


class Trainer:
    """The job queue, its worker thread and the event follower."""

    def __init__(self, store: Store, settings: TrainerSettings):
        self.store, self.settings = store, settings
        self.board = JobBoard()
        self._jobs: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._outstanding = 0  # jobs submitted and not yet ended (the cursor may move only at 0)
        self._outstanding_lock = threading.Lock()
        self._saved_cursor = store.get_meta(CURSOR_META_KEY) or ""
        self._event_job_queued = threading.Event()
        # Tracing on: what each queued job's span links to (the RPC that asked for it; for
        # event-driven jobs, the spans that appended the label and persona events it trains on).
        self._causes: dict[str, list[dict[str, str]]] = {}
        self._event_causes: list[dict[str, str]] = []
        self._causes_lock = threading.Lock()
        self._threads = [threading.Thread(target=self._work, name="trainer-worker", daemon=True),
                         threading.Thread(target=self._follow_events, name="trainer-events", daemon=True)]

    def start(self) -> None:
        self._fail_interrupted_jobs()
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.board.close()
        self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=30)

    def submit(self, trigger: int, message: str = "") -> TrainingJobRecord:
        job = TrainingJobRecord(job_id=uuid.uuid4().hex, trigger=trigger, phase=pb.TRAINING_PHASE_QUEUED,
                                message=message)
        with self._outstanding_lock:
            self._outstanding += 1
        self.store.put_training_job(job)
        self.board.publish(job)
        if cause := tracing.event_attributes():
            with self._causes_lock:
                self._causes[job.job_id] = [cause]
        self._jobs.put(job)
        return job

    @property
    def idle(self) -> bool:
        with self._outstanding_lock:
            return self._outstanding == 0

    # ---- worker ----------------------------------------------------------
    def _work(self) -> None:
        self._decide_undecided()
        while (job := self._jobs.get()) is not None:
            if job.trigger == pb.TRAINING_TRIGGER_EVENTS:
                self._event_job_queued.clear()
            reporter = JobReporter(self.store, job, self.board.publish)
            with tracing.work_span("visage.training", self._take_causes(job),
                                   {"visage.training_job": job.job_id,
                                    "visage.trigger": pb.TrainingTrigger.Name(job.trigger)}) as span:
                cursor = run_job(self.store, reporter, self.settings, force=job.trigger == pb.TRAINING_TRIGGER_MANUAL)
                tracing.annotate(span, {"visage.phase": pb.TrainingPhase.Name(reporter.job.phase),
                                        "visage.model_version": reporter.job.model_version,
                                        "visage.activated": reporter.job.activated,
                                        "visage.message": reporter.job.message},
                                 failed=reporter.job.phase == pb.TRAINING_PHASE_FAILED)
            self._advance_cursor(cursor)
            with self._outstanding_lock:
                self._outstanding -= 1

    def _take_causes(self, job: TrainingJobRecord) -> list[dict[str, str]]:
        with self._causes_lock:
            causes = self._causes.pop(job.job_id, [])
            if job.trigger == pb.TRAINING_TRIGGER_EVENTS:
                causes, self._event_causes = causes + self._event_causes, []
            return causes

    def _note_causes(self, events) -> None:
        """Keeps the trace context of trigger events for the next event-driven job's span."""
        if not tracing.active():
            return
        causes = [event.attributes for event in events
                  if event.type in TRIGGER_EVENTS and tracing.TRACEPARENT in event.attributes]
        if causes:
            with self._causes_lock:
                self._event_causes = (self._event_causes + causes)[-tracing.MAX_LINKS:]

    def _advance_cursor(self, cursor: str) -> None:
        # Jobs end in submission order and the follower moves it only when no
        # job is outstanding, so this never moves the cursor backwards.
        if cursor and cursor != self._saved_cursor:
            self.store.set_meta(CURSOR_META_KEY, cursor)
            self._saved_cursor = cursor

    def _decide_undecided(self) -> None:
        """A version stored just before a crash is decided before any new job."""
        try:
            for decided in decide_undecided(self.store, self.settings):
                log.info("after restart: %s", decided)
        except Exception:  # the store may be briefly unavailable: the next start tries again
            log.exception("deciding versions left undecided by a crash failed")

    def _fail_interrupted_jobs(self) -> None:
        """Jobs a killed trainer left unfinished are marked FAILED (their
        labels are retrained: the cursor did not move)."""
        for job in self.store.list_training_jobs(100):
            if job.phase not in TERMINAL_PHASES:
                job.phase, job.message = pb.TRAINING_PHASE_FAILED, "interrupted: the trainer stopped during the job"
                self.store.put_training_job(job)

    # ---- event follower --------------------------------------------------
    def _follow_events(self) -> None:
        cursor = self.store.get_meta(CURSOR_META_KEY) or ""
        last_trigger_at = None  # monotonic time of the newest unhandled label/persona event
        while not self._stop.is_set():
            try:
                events = self.store.read_events(cursor, 1000)
            except Exception:  # store briefly unavailable: keep following
                log.exception("reading events failed")
                events = []
            if events:
                cursor = events[-1].cursor
                self._note_causes(events)
                if any(event.type in TRIGGER_EVENTS for event in events):
                    last_trigger_at = time.monotonic()
                if len(events) == 1000:
                    continue  # catch up before waiting
            if last_trigger_at is not None and time.monotonic() - last_trigger_at >= self.settings.debounce_seconds:
                if not self._event_job_queued.is_set():
                    self._event_job_queued.set()
                    self.submit(pb.TRAINING_TRIGGER_EVENTS, "label or persona events")
                last_trigger_at = None
            elif last_trigger_at is None and self.idle:
                self._advance_cursor(cursor)  # nothing pending: the events read need no training
            self._stop.wait(self.settings.poll_seconds)


@answer_errors
class TrainServicer(train_pb2_grpc.TrainServiceServicer):
    def __init__(self, store: Store, trainer: Trainer):
        self.store, self.trainer = store, trainer

    def StartTraining(self, request, context):
        reason = request.reason.strip()[:500] or "started by an operator"
        return convert.training_job(self.trainer.submit(pb.TRAINING_TRIGGER_MANUAL, reason))

    def GetTrainingJob(self, request, context):
        return convert.training_job(self._job(request.job_id))

    def ListTrainingJobs(self, request, context):
        def fetch(offset: int, size: int) -> tuple[list, bool]:
            jobs = self.store.list_training_jobs(offset + size + 1)
            return [convert.training_job(job) for job in jobs[offset:offset + size]], offset + size < len(jobs)

        jobs, token = self._list(request, "jobs", fetch)
        return train_pb2.ListTrainingJobsResponse(training_jobs=jobs, next_page_token=token)

    @nonblocking.mark
    def WatchTrainingJobs(self, request, context, send):
        # Holds no thread while open (visage.nonblocking): the board's deliveries send the updates.
        watch = self.trainer.board.subscribe(request.job_id, lambda job: send(convert.training_job(job)),
                                             lambda error: end_stream(context, send, error, "WatchTrainingJobs"))
        nonblocking.on_end(context, watch.close)  # client cancel, deadline, or its status sent
        # Subscribed before the snapshot is read: no update after it is missed.
        job = self._job(request.job_id) if request.job_id else None
        open_stream(context)  # after the lookup: an unknown job is NOT_FOUND (REST 404), not a 200
        watch.start(job)

    def ListModelVersions(self, request, context):
        def fetch(offset: int, size: int) -> tuple[list, bool]:
            versions, pinned = self.store.list_model_versions(), decisions.pinned_version(self.store)
            return [self._version(v, pinned) for v in versions[offset:offset + size]], offset + size < len(versions)

        versions, token = self._list(request, "versions", fetch)
        return train_pb2.ListModelVersionsResponse(model_versions=versions, next_page_token=token)

    def GetModelVersion(self, request, context):
        record = self.store.get_model_version(request.version) if request.version > 0 else None
        if record is None:
            raise NotFound(f"model version {request.version} not found")
        return self._version(record)

    def GetActiveModelVersion(self, request, context):
        record = self.store.active_model_version()
        if record is None:
            raise NotFound(NO_ACTIVE_VERSION)
        return self._version(record)

    def ActivateModelVersion(self, request, context):
        # NotFound, Withdrawn (trained on erased labels), ModelGone (FAILED_PRECONDITION both)
        # and store outages are answered by visage.errors' one mapping.
        if request.version <= 0:
            raise NotFound(f"model version {request.version} not found")
        return self._version(decisions.activate_by_hand(self.store, request.version))

    def ReleaseModelPin(self, request, context):
        record = decisions.release_pin(self.store)
        if record is None:
            raise NotFound(NO_ACTIVE_VERSION)
        return self._version(record)

    # ---- helpers ---------------------------------------------------------
    def _version(self, record, pinned: int | None = None):
        """The wire version, with whether it is the pinned one."""
        message = convert.model_version(record)
        message.pinned = record.version == (decisions.pinned_version(self.store) if pinned is None else pinned)
        return message

    def _job(self, job_id: str) -> TrainingJobRecord:
        if not job_id:
            raise InvalidArgument("job_id is required")
        job = self.store.get_training_job(job_id)
        if job is None:
            raise NotFound(f"training job {job_id[:100]!r} not found")
        return job

    @staticmethod
    def _list(request, scope: str, fetch) -> tuple[list, str]:
        """A bad page size or token is INVALID_ARGUMENT (visage.errors)."""
        return paging.offset_list(scope, request, fetch, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def start(config: Config, store: Store, address: str, settings: TrainerSettings | None = None) -> RunningService:
    """Starts the trainer's worker and its gRPC server; closing stops the worker."""
    trainer = Trainer(store, settings or TrainerSettings.from_env())
    trainer.start()
    servicer = TrainServicer(store, trainer)
    server, port, health = build_server(
        lambda s: train_pb2_grpc.add_TrainServiceServicer_to_server(servicer, s),
        [SERVICE_NAMES["trainer"]], address)
    return RunningService(server, port, health, close=trainer.stop)
