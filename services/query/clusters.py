"""Suggested people, kept fresh in the background.

A follower thread reads the event log; events that change who is unknown
(ingest, labels, hides, re-classification, persona deletion) mark the result
stale, and once the log has been quiet for QUIET_SECONDS the unknown faces are
clustered again (visage.clustering) on that thread, at a lower CPU priority
than the RPC threads. Nothing is computed until somebody first asks
(ListFaceClusters), so a mesh nobody organises pays nothing; from then on the
result is kept fresh. ListFaceClusters answers from the last result at once,
never waiting for a computation. The result
lives in this process's memory: each query replica computes its own (the same
faces give the same groups), so the service stays stateless in the store.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from visage import clustering
from visage.store import Store
from visage.store.records import UnknownFaceKey
from visage.v1 import resources_pb2 as pb

log = logging.getLogger(__name__)

RECLUSTER_ON = {pb.EVENT_TYPE_IMAGE_INGESTED, pb.EVENT_TYPE_FACE_ADDED, pb.EVENT_TYPE_FACE_LABELLED, pb.EVENT_TYPE_FACE_UNLABELLED,
                pb.EVENT_TYPE_PERSONA_DELETED, pb.EVENT_TYPE_MODEL_VERSION_ACTIVATED,
                pb.EVENT_TYPE_PREDICTIONS_WRITTEN, pb.EVENT_TYPE_HIDDEN_CHANGED}
QUIET_SECONDS = 0.5
POLL_SECONDS = 0.2
INDEX_PAGE = 5000   # unknown-faces index rows per store read
IMAGE_BATCH = 500   # images whose faces are read at once


@dataclass
class ClusterResult:
    clusters: list[clustering.Cluster] = field(default_factory=list)
    face_ids: list[str] = field(default_factory=list)  # Cluster.members index into this
    unknown_faces: int = 0
    computed_after: str = ""  # the event cursor the computation had seen


def unknown_embeddings(store: Store) -> tuple[list[str], np.ndarray]:
    """Faces nobody is known for (as ListUnknownFaces lists them: the store's unknown-faces
    index) and not hidden, with their embeddings, newest image first."""
    hidden = store.hidden_ids("face")
    keys: list[UnknownFaceKey] = []
    after = None
    while page := store.list_unknown_faces(after, INDEX_PAGE):
        keys += [key for key in page if key.face_id not in hidden]
        after = page[-1]
    wanted = {key.face_id for key in keys}
    found: dict[str, np.ndarray] = {}
    image_ids = list(dict.fromkeys(key.image_id for key in keys))
    for start in range(0, len(image_ids), IMAGE_BATCH):  # faces without crops, a batch of images at a time
        for faces in store.faces_of_images(image_ids[start:start + IMAGE_BATCH]).values():
            found.update((face.face_id, face.embedding) for face in faces if face.face_id in wanted)
    face_ids = [key.face_id for key in keys if key.face_id in found]
    embeddings = (np.stack([found[face_id] for face_id in face_ids]).astype(np.float32) if face_ids
                  else np.zeros((0, 128), np.float32))
    return face_ids, embeddings


class SuggestedPeople:
    def __init__(self, store: Store, quiet_seconds: float = QUIET_SECONDS):
        self.store = store
        self.quiet_seconds = quiet_seconds
        self.result = ClusterResult()
        self._dirty = threading.Event()
        self._dirty.set()  # compute once when first asked
        self._computing = threading.Event()  # dirty is cleared when a computation starts: stale until it ends
        self._wanted = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="suggested-people", daemon=True)

    def start(self) -> "SuggestedPeople":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    @property
    def stale(self) -> bool:
        """A change is waiting for a computation, or one is running: the result is older than the faces."""
        return self._dirty.is_set() or self._computing.is_set()

    def current(self) -> ClusterResult:
        """The latest result; the first call starts the background computations."""
        self._wanted.set()
        return self.result

    def _run(self) -> None:
        _lower_this_threads_priority()
        while not self._wanted.wait(POLL_SECONDS):  # idle (not even reading events) until asked
            if self._stop.is_set():
                return
        cursor = self.store.latest_cursor()
        last_change = time.monotonic() - self.quiet_seconds
        while not self._stop.is_set():
            try:
                events = self.store.read_events(cursor, 1000)
                if events:
                    cursor = events[-1].cursor
                    if any(event.type in RECLUSTER_ON for event in events):
                        self._dirty.set()
                        last_change = time.monotonic()
                    if len(events) == 1000:
                        continue  # catch up before computing
                quiet = time.monotonic() - last_change >= self.quiet_seconds
                if self._dirty.is_set() and quiet:
                    self._computing.set()
                    self._dirty.clear()  # events arriving during the computation set it again
                    try:
                        self._compute(cursor)
                    finally:
                        self._computing.clear()
            except Exception:  # noqa: BLE001 - store briefly unavailable: keep the last result, retry
                log.exception("computing suggested people failed; retrying")
                self._dirty.set()
            self._stop.wait(POLL_SECONDS)

    def _compute(self, cursor: str) -> None:
        started = time.monotonic()
        face_ids, embeddings = unknown_embeddings(self.store)
        found = clustering.clusters(face_ids, embeddings)
        self.result = ClusterResult(found, face_ids, len(face_ids), cursor)  # one swap: readers see old or new
        log.info("suggested people: %d groups among %d unknown faces in %.1fs",
                 len(found), len(face_ids), time.monotonic() - started)
        self.store.append_event(pb.EVENT_TYPE_FACE_CLUSTERS_UPDATED, cursor,
                                {"clusters": len(found), "unknown_faces": len(face_ids)})


def _lower_this_threads_priority() -> None:
    """Linux gives each thread its own nice value: clustering yields the CPU to
    the threads answering RPCs (numpy and HDBSCAN release the GIL while they work)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):  # not Linux, or not permitted: run at normal priority
        pass
