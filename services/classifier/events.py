"""Follows the store's event log so the classifier reacts to the rest of the
mesh: an activated version is swapped in and re-classifies everything; newly
ingested or unlabelled faces get a prediction of the active version.

Events are at-least-once (the cursor is saved after handling), so every
handler is idempotent: predictions are upserts and a repeated activation
of an already re-classified version is skipped."""
from __future__ import annotations

import logging
import threading
import time

import numpy as np

from visage import tracing
from visage.store.base import Store
from visage.v1 import resources_pb2 as pb
from visage_classifier.models import ActiveModel, ModelLoadError, predict
from visage.v1 import classify_pb2
from visage_classifier.reclassify import FAILED, Reclassifier, Run, prediction_records

log = logging.getLogger(__name__)

CURSOR_KEY = "classifier.event_cursor"
POLL_SECONDS = 0.2
PAGE = 1000


def _outcome(run: Run) -> tuple[dict[str, str | int], bool]:
    """What a re-classification run came to, for its span; and whether it failed."""
    _, progress = run.wait_update(-1, 0)  # the newest progress, at once
    return ({"visage.model_version": run.version, "visage.state": classify_pb2.ReclassifyState.Name(progress.state),
             "visage.faces_done": progress.done}, progress.state == FAILED)


class EventWatcher:
    def __init__(self, store: Store, models: ActiveModel, reclassifier: Reclassifier,
                 poll_seconds: float = POLL_SECONDS, replica: str = ""):
        self._store = store
        # Each replica follows the log with a cursor of its own (a restarted one resumes where
        # it stopped, not where another replica is); the work an activation starts is shared.
        self._cursor_key = f"{CURSOR_KEY}.{replica}" if replica else CURSOR_KEY
        self._models = models
        self._reclassifier = reclassifier
        self._poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="classifier-events", daemon=True)
        self._handlers = {
            pb.EVENT_TYPE_MODEL_VERSION_ACTIVATED: self._on_activated,
            pb.EVENT_TYPE_IMAGE_INGESTED: self._on_image_ingested,
            pb.EVENT_TYPE_FACE_UNLABELLED: self._on_face_unlabelled,
            pb.EVENT_TYPE_FACE_ADDED: self._on_face_unlabelled,  # a face drawn on an image: as a new one
            pb.EVENT_TYPE_ERASED: self._on_erased,
        }

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        # A first start begins at the log's end; the catch-up below covers an
        # activation that happened while no classifier was running.
        cursor = self._store.get_meta(self._cursor_key)
        if cursor is None:
            cursor = self._store.latest_cursor()
        self._catch_up()
        while not self._stop.is_set():
            try:
                cursor = self._handle_page(cursor)
            except Exception:  # the store may be briefly unreachable; try again, never die
                log.exception("event handling failed; retrying")
                self._stop.wait(1.0)

    def _catch_up(self) -> None:
        try:
            if self._store.active_model_version() is not None and not self._reclassifier.is_up_to_date():
                self._reclassifier.start_or_join(shared=True)
        except Exception:
            log.exception("start-up re-classification check failed")

    def _handle_page(self, cursor: str) -> str:
        events = self._store.read_events(cursor, PAGE)
        if not events:
            self._stop.wait(self._poll_seconds)
            return cursor
        for event in events:
            handler = self._handlers.get(event.type)
            if handler is not None:
                # Tracing on: a span per event handled, linked to the span that appended the event.
                with tracing.work_span(f"visage.classifier {pb.EventType.Name(event.type)}", [event.attributes],
                                       {"visage.event_subject": event.subject}):
                    handler(event.subject)
        cursor = events[-1].cursor
        self._store.set_meta(self._cursor_key, cursor)
        return cursor

    # ---- handlers ----------------------------------------------------------
    def _on_activated(self, _version: str) -> None:
        if self._reclassifier.is_up_to_date():
            return
        run = self._reclassifier.start_or_join(shared=True)
        log.info("activation seen: re-classifying with version %d", run.version)
        tracing.span_until("visage.reclassify", run.join, lambda: _outcome(run))

    def _on_image_ingested(self, image_id: str) -> None:
        # A face labelled since its ingest (the event may be handled late) keeps its label only.
        faces = [face for face in self._store.faces_of_image(image_id)
                 if not any(label.verdict == pb.VERDICT_BELONGS for label in self._store.labels_of_face(face.face_id))]
        self._predict_faces([face.face_id for face in faces], [face.embedding for face in faces])

    def _on_face_unlabelled(self, face_id: str) -> None:
        face = self._store.get_face(face_id)
        labels = self._store.labels_of_face(face_id)
        if face is None or any(label.verdict == pb.VERDICT_BELONGS for label in labels):
            return
        self._predict_faces([face.face_id], [face.embedding])

    def _on_erased(self, _subject: str) -> None:
        """An erasure may have withdrawn the version served: stop serving it now."""
        try:
            self._models.refresh()
        except ModelLoadError:
            pass  # logged by refresh; the old model keeps serving until a loadable one is active

    def _predict_faces(self, face_ids: list[str], embeddings: list) -> None:
        """Writes predictions of the active version; redone if a new version
        was swapped in meanwhile, so a stale answer never outlives a fresh one."""
        if not face_ids:
            return
        matrix = np.stack(embeddings).astype(np.float32)
        while (predictor := self._models.current()) is not None:
            answers = predict(predictor, matrix)
            known = {persona_id for persona_id in answers.persona_ids if persona_id
                     and self._store.get_persona(persona_id) is not None}
            self._store.put_predictions(prediction_records(face_ids, answers.persona_ids, answers.confidences,
                                                           answers.version, known, time.time()))
            if self._models.current() is predictor:
                return
