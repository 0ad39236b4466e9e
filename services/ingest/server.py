"""IngestService: images in, faces found and embedded in the bounded worker
pool, everything stored through the one store interface.

Idempotent by construction: the image id is the hex SHA-256 of the bytes and a
face id is "<image id>-<index>", so the same bytes always map to the same rows
and store.put_image refuses a second copy."""
from __future__ import annotations

import contextvars
import hashlib
import logging
import threading
import unicodedata
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import grpc

from visage import convert, metrics
from visage.auth import identity
from visage.config import Config
from visage.errors import InvalidArgument, answer_errors, item_status
from visage.faces import metadata
from visage.faces.pipeline import AnalyzedImage
from visage.faces.pool import ANALYSIS_ERRORS, IN_FLIGHT_PER_WORKER, PipelinePool, WorkerCrashed
from visage.server import SERVICE_NAMES, RunningService, build_server
from visage.store import Store
from visage.store.base import NotFound
from visage.store.domain import check_not_stored
from visage.store.records import FaceRecord, ImageRecord, face_id_of
from visage.v1 import ingest_pb2, ingest_pb2_grpc
from visage.v1 import resources_pb2 as pb

log = logging.getLogger(__name__)

MAX_FILENAME_CHARS = 255


@dataclass
class Ingested:
    image: ImageRecord
    faces: list[FaceRecord]
    duplicate: bool


def image_id_of(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def clean_filename(filename: str) -> str:
    """Display-only name: no directory part (a client's path says who and where; either
    separator), control characters dropped, length capped."""
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    printable = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C")
    return printable[:MAX_FILENAME_CHARS]


class ActiveWork:
    """Counts ingests between analysis and commit, so shutdown can wait for them."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = threading.Condition()

    def __enter__(self) -> None:
        with self._idle:
            self._count += 1

    def __exit__(self, *exc) -> None:
        with self._idle:
            self._count -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._idle:
            return self._idle.wait_for(lambda: self._count == 0, timeout)


@answer_errors
class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    def __init__(self, store: Store, pool: PipelinePool) -> None:
        self.store = store
        self.pool = pool
        self.active = ActiveWork()
        # Threads that only wait on the process pool; a bulk stream's images run
        # here concurrently so one stream keeps every worker busy.
        self._window = pool.workers * IN_FLIGHT_PER_WORKER
        self._threads = ThreadPoolExecutor(max_workers=self._window * 2, thread_name_prefix="ingest")
        metrics.watch_queue("ingest_images_in_progress", lambda: self.active._count)

    # ---- RPCs --------------------------------------------------------------
    def IngestImage(self, request, context):
        done = self.ingest(request.content, request.filename)
        return ingest_pb2.IngestImageResponse(
            image=convert.image(done.image), faces=[convert.face(face) for face in done.faces],
            duplicate=done.duplicate)

    def IngestImages(self, request_iterator, context):
        """Images run concurrently within a bounded window; reading the stream
        pauses while the window is full (gRPC flow control then slows the
        client). Results keep the order sent."""
        pending: deque[tuple[str, Future]] = deque()
        results: list[ingest_pb2.IngestResult] = []
        for request in request_iterator:
            if len(pending) >= self._window:
                results.append(self._result(*pending.popleft()))
            filename = clean_filename(request.filename)
            # A copy of this call's context per image: the caller's identity (events' actor)
            # and fair-admission key (visage.guard) are context variables a pool does not carry.
            job = contextvars.copy_context().run
            pending.append((filename, self._threads.submit(job, self.ingest, request.content, filename)))
        results.extend(self._result(*item) for item in pending)
        return summarize(results)

    def AddFace(self, request, context):
        face = self.add_face(request.image_id, (request.box.left, request.box.top, request.box.right,
                                                request.box.bottom), request.persona_id)
        return ingest_pb2.AddFaceResponse(face=convert.face(face, self.store.labels_of_face(face.face_id)))

    # ---- one drawn face --------------------------------------------------------
    def add_face(self, image_id: str, box: tuple[int, int, int, int], persona_id: str = "") -> FaceRecord:
        """A face drawn on a stored image: found in the box by the face pipeline, stored by the
        store's rule (visage.store.domain.add_face) as drawn by the caller."""
        if not image_id:
            raise InvalidArgument("image_id is required")
        image = self.store.get_image(image_id)
        content = self.store.get_image_content(image_id) if image is not None else None
        if content is None:
            raise NotFound(f"image {image_id!r} not found")
        check_not_stored(self.store.faces_of_images([image_id])[image_id], box)  # before the pipeline's work
        with self.active:
            found = self.pool.describe_box(content, box)
            face = FaceRecord(face_id="", image_id=image_id, index=-1, box=found.box, landmarks=found.landmarks,
                              embedding=found.embedding, crop_jpeg=found.crop_jpeg,
                              drawn_by=identity.current_subject())
            face = self.store.add_face(face, persona_id)
        log.info("face %s drawn on image %s", face.face_id, image_id)  # ids only (issue 25)
        return face

    # ---- one image -----------------------------------------------------------
    def ingest(self, content: bytes, filename: str) -> Ingested:
        """Analyses and stores one image; raises a kind visage.errors answers (bad image, store error, ...)."""
        filename = clean_filename(filename)
        if 0 < len(content) <= self.pool.config.max_image_bytes:  # larger ones are refused unread
            content = metadata.minimise(content)  # what is stored, hashed and served has no metadata
        image_id = image_id_of(content)
        with self.active:
            stored = self.store.get_image(image_id) if content else None
            if stored is not None:  # cheap path: no analysis for bytes we already have
                return Ingested(stored, self.store.faces_of_image(image_id), duplicate=True)
            analyzed = self._analyze(content, filename)
            image, faces = records_of(image_id, filename, len(content), analyzed)
            created = self.store.put_image(image, content, faces)  # a StoreError: see _result / visage.errors
        if not created:  # a concurrent call stored the same bytes first
            return Ingested(self.store.get_image(image_id), self.store.faces_of_image(image_id), duplicate=True)
        # Ids only: a file name can name a person, and logs outlive an erasure (issue 25).
        log.info("ingested image %s: %d faces", image_id, len(faces))
        return Ingested(image, faces, duplicate=False)

    def _analyze(self, content: bytes, filename: str) -> AnalyzedImage:
        name = filename or "image"
        try:
            return self.pool.analyze(content)
        except ANALYSIS_ERRORS as error:
            if isinstance(error, WorkerCrashed):
                log.error("face pipeline crashed on an image of %d bytes", len(content))  # no file name
            raise type(error)(f"{name}: {error}") from None  # the same kind, naming the image

    def _result(self, filename: str, future: Future) -> ingest_pb2.IngestResult:
        try:
            done = future.result()
        except Exception as error:  # noqa: BLE001 - this image fails (a bug too: INTERNAL), never the stream
            code, message = item_status(error, f"IngestImages {filename!r}")
            return ingest_pb2.IngestResult(filename=filename, outcome=ingest_pb2.INGEST_OUTCOME_FAILED,
                                           error_code=code.name, error_message=message)
        return ingest_pb2.IngestResult(filename=filename, image_id=done.image.image_id,
                                       outcome=outcome_of(done), face_count=len(done.faces),
                                       face_ids=[face.face_id for face in done.faces])

    def close(self, timeout: float = 30.0) -> None:
        self._threads.shutdown(wait=True, cancel_futures=True)
        if not self.active.wait_idle(timeout):
            log.warning("ingests still running after %.0f s at shutdown", timeout)


def records_of(image_id: str, filename: str, size: int,
               analyzed: AnalyzedImage) -> tuple[ImageRecord, list[FaceRecord]]:
    faces = [
        FaceRecord(face_id=face_id_of(image_id, index), image_id=image_id, index=index, box=found.box,
                   landmarks=found.landmarks, embedding=found.embedding, crop_jpeg=found.crop_jpeg)
        for index, found in enumerate(analyzed.faces)
    ]
    status = pb.IMAGE_STATUS_FACES_FOUND if faces else pb.IMAGE_STATUS_NO_FACE
    image = ImageRecord(image_id=image_id, filename=filename, content_type=analyzed.content_type,
                        width=analyzed.width, height=analyzed.height, size_bytes=size,
                        face_count=len(faces), status=status)
    return image, faces


def outcome_of(done: Ingested) -> int:
    if done.duplicate:
        return ingest_pb2.INGEST_OUTCOME_DUPLICATE
    return ingest_pb2.INGEST_OUTCOME_INGESTED if done.faces else ingest_pb2.INGEST_OUTCOME_NO_FACE


def summarize(results: list[ingest_pb2.IngestResult]) -> ingest_pb2.IngestImagesResponse:
    def count(outcome: int) -> int:
        return sum(result.outcome == outcome for result in results)
    return ingest_pb2.IngestImagesResponse(
        results=results, images=len(results),
        faces=sum(r.face_count for r in results if r.outcome == ingest_pb2.INGEST_OUTCOME_INGESTED),
        images_without_face=count(ingest_pb2.INGEST_OUTCOME_NO_FACE),
        duplicates=count(ingest_pb2.INGEST_OUTCOME_DUPLICATE),
        failures=count(ingest_pb2.INGEST_OUTCOME_FAILED),
    )


def add_to_server(servicer: IngestServicer, server: grpc.Server) -> None:
    ingest_pb2_grpc.add_IngestServiceServicer_to_server(servicer, server)


def start(config: Config, store: Store, address: str, pool: PipelinePool | None = None) -> RunningService:
    """Starts the service (the caller owns the store). Its close lets commits in
    progress end, then stops the face workers if this call started them."""
    own_pool = pool is None
    pool = pool or PipelinePool(config)
    servicer = IngestServicer(store, pool)
    server, port, health = build_server(
        lambda grpc_server: add_to_server(servicer, grpc_server), [SERVICE_NAMES["ingest"]], address)

    def close() -> None:
        servicer.close()
        if own_pool:
            pool.close()

    return RunningService(server, port, health, close=close)
