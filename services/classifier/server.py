"""ClassifyService: names the faces of an image (or of embeddings) with the
active model version, and re-classifies the store on demand or when a new
version is activated.

`start(config, store, address)` runs it in-process (tests use port 0);
`python -m visage_classifier` runs it as a service."""
from __future__ import annotations

import contextvars
import logging
import os
import queue
import socket
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
import numpy as np

from visage import convert, metrics
from visage.config import Config
from visage.faces.pipeline import FoundFace
from visage.faces.pool import PipelinePool
from visage.faces.status import ANALYSIS_ERRORS, analysis_failure
from visage.model import Predictor
from visage.server import SERVICE_NAMES, RpcFailure, RunningService, build_server, open_stream
from visage.errors import store_status
from visage.store.base import Store, StoreError
from visage.store.records import EMBEDDING_DIM
from visage.v1 import classify_pb2, classify_pb2_grpc
from visage.v1 import resources_pb2 as pb
from visage_classifier.events import EventWatcher
from visage_classifier.models import ActiveModel, ModelLoadError, predict
from visage_classifier.incremental import ReclassifyMemory
from visage_classifier.reclassify import BATCH_ROWS, Reclassifier, SharedWork, follow

log = logging.getLogger(__name__)

REPLICA_ENV = "VISAGE_REPLICA_ID"  # names this replica's event cursor (default: the host name, a pod's name)

STREAM_IN_FLIGHT = 8  # stream items worked on at once per call (back-pressure on the caller)


def parse_embeddings(embeddings) -> np.ndarray:
    """Repeated Embedding messages → float32 [n, 128]; refuses wrong sizes and non-finite values."""
    for index, embedding in enumerate(embeddings):
        if len(embedding.values) != EMBEDDING_DIM:
            raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT,
                            f"embeddings[{index}] has {len(embedding.values)} values; expected {EMBEDDING_DIM}")
    matrix = np.array([embedding.values for embedding in embeddings], dtype=np.float32).reshape(-1, EMBEDDING_DIM)
    if not np.isfinite(matrix).all():
        bad = int(np.flatnonzero(~np.isfinite(matrix).all(axis=1))[0])
        raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, f"embeddings[{bad}] holds NaN or infinite values")
    return matrix


@dataclass
class Classifier:
    """What the RPCs share: the face pipeline, the active model, the store
    (display names) and the re-classifier."""
    store: Store
    pool: PipelinePool
    models: ActiveModel
    reclassifier: Reclassifier

    def display_names(self, persona_ids: list[str]) -> dict[str, str]:
        """Names of the personas (deduplicated); a persona deleted since training is absent."""
        names = {}
        for persona_id in set(filter(None, persona_ids)):
            persona = self.store.get_persona(persona_id)
            if persona is not None:
                names[persona_id] = persona.display_name
        return names

    def analyze(self, content: bytes):
        try:
            return self.pool.analyze(content)
        except ANALYSIS_ERRORS as error:
            raise analysis_failure(error, str(error)) from None

    def classify_faces(self, predictor: Predictor | None, faces: list[FoundFace]) -> tuple[list, int]:
        """The faces named by one model version (taken once by the caller)."""
        matrix = np.stack([face.embedding for face in faces]) if faces else np.zeros((0, EMBEDDING_DIM), np.float32)
        answers = predict(predictor, matrix)
        names = self.display_names(answers.persona_ids)
        classified = []
        for face, persona_id, confidence in zip(faces, answers.persona_ids, answers.confidences.tolist()):
            known = persona_id in names  # a deleted persona is answered as unknown
            classified.append(classify_pb2.ClassifiedFace(
                box=convert.box(face.box), landmarks=convert.landmarks(face.landmarks),
                persona_id=persona_id if known else "", display_name=names.get(persona_id, ""),
                confidence=confidence))
        return classified, answers.version

    def classify_image(self, content: bytes) -> tuple[list, int]:
        predictor = self.models.current()  # this request finishes on this version, whatever is swapped in
        analyzed = self.analyze(content)
        return self.classify_faces(predictor, analyzed.faces)

    def classify_embedding_item(self, embedding: classify_pb2.Embedding) -> tuple[list, int]:
        matrix = parse_embeddings([embedding])
        predictor = self.models.current()
        answers = predict(predictor, matrix)
        names = self.display_names(answers.persona_ids)
        persona_id = answers.persona_ids[0]
        face = classify_pb2.ClassifiedFace(
            persona_id=persona_id if persona_id in names else "", display_name=names.get(persona_id, ""),
            confidence=float(answers.confidences[0]))
        return [face], answers.version


class ClassifyServicer(classify_pb2_grpc.ClassifyServiceServicer):
    def __init__(self, classifier: Classifier, stream_workers: int):
        self._classifier = classifier
        # Shared by every ClassifyStream call; each call bounds its own in-flight items.
        self._stream_executor = futures.ThreadPoolExecutor(max_workers=stream_workers,
                                                           thread_name_prefix="classify-stream")
        metrics.watch_queue("classify_stream_items", self._stream_executor._work_queue.qsize)  # no public count

    def close(self) -> None:
        self._stream_executor.shutdown(wait=False, cancel_futures=True)

    def Classify(self, request, context):
        if context.time_remaining() is not None and context.time_remaining() <= 0:
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline expired before the image was analysed")
        try:
            faces, version = self._classifier.classify_image(request.content)
        except RpcFailure as error:
            error.abort(context)
        return classify_pb2.ClassifyResponse(faces=faces, model_version=version)

    def ClassifyEmbeddings(self, request, context):
        if not request.embeddings:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "embeddings is required (at least one 128-d embedding)")
        try:
            matrix = parse_embeddings(request.embeddings)
        except RpcFailure as error:
            error.abort(context)
        answers = predict(self._classifier.models.current(), matrix)
        names = self._classifier.display_names(answers.persona_ids)
        predictions = [pb.Prediction(persona_id=persona_id if persona_id in names else "", confidence=confidence,
                                     model_version=answers.version)
                       for persona_id, confidence in zip(answers.persona_ids, answers.confidences.tolist())]
        return classify_pb2.ClassifyEmbeddingsResponse(predictions=predictions, model_version=answers.version)

    def ClassifyStream(self, request_iterator, context):
        """Items are worked on concurrently (images in the pipeline pool) and
        answered as they finish, matched by request_id. A reader thread pulls
        requests only while fewer than STREAM_IN_FLIGHT are pending, so a fast
        caller is slowed down instead of queueing without bound."""
        open_stream(context)  # open before the first answer, which waits for the caller's first item
        answers: queue.Queue = queue.Queue()
        slots = threading.Semaphore(STREAM_IN_FLIGHT)
        end = object()

        def answer(item: classify_pb2.ClassifyStreamRequest) -> classify_pb2.ClassifyStreamResponse:
            try:
                if not context.is_active():
                    raise RpcFailure(grpc.StatusCode.CANCELLED, "the stream was cancelled")
                kind = item.WhichOneof("input")
                if kind == "content":
                    faces, version = self._classifier.classify_image(item.content)
                elif kind == "embedding":
                    faces, version = self._classifier.classify_embedding_item(item.embedding)
                else:
                    raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, "item has neither content nor embedding")
                return classify_pb2.ClassifyStreamResponse(request_id=item.request_id, faces=faces,
                                                           model_version=version)
            except RpcFailure as error:
                return classify_pb2.ClassifyStreamResponse(request_id=item.request_id, error_code=error.code.name,
                                                           error_message=error.message)
            except StoreError as error:  # e.g. UNAVAILABLE for this item; the stream goes on
                code, message = store_status(error, "ClassifyStream")
                return classify_pb2.ClassifyStreamResponse(request_id=item.request_id, error_code=code.name,
                                                           error_message=message)
            except Exception as error:  # one item's bug must not end the caller's stream
                log.exception("stream item %r failed", item.request_id)
                return classify_pb2.ClassifyStreamResponse(request_id=item.request_id, error_code="INTERNAL",
                                                           error_message=f"internal error: {error}")
            finally:
                slots.release()

        def read_requests() -> None:
            pending = []
            try:
                for item in request_iterator:
                    while not slots.acquire(timeout=0.5):
                        if not context.is_active():
                            return
                    # The caller's context per item (identity, fair-admission key): see ingest.
                    future = self._stream_executor.submit(contextvars.copy_context().run, answer, item)
                    future.add_done_callback(lambda done: answers.put(done.result()))
                    pending.append(future)
            except Exception:  # the caller went away or cancelled: nothing more to read
                pass
            finally:
                futures.wait(pending)
                answers.put(end)

        reader = threading.Thread(target=contextvars.copy_context().run, args=(read_requests,),
                                  name="classify-stream-reader", daemon=True)
        reader.start()
        while (response := answers.get()) is not end:
            if not context.is_active():
                break
            yield response

    def Reclassify(self, request, context):
        run = self._classifier.reclassifier.start_or_join()
        open_stream(context)
        yield from follow(run, context.is_active)


@dataclass(kw_only=True)
class RunningClassifier(RunningService):
    classifier: Classifier  # what tests reach into: its models and reclassifier


def start(config: Config, store: Store, address: str, pool: PipelinePool | None = None,
          watch_events: bool = True, max_workers: int = 16) -> RunningClassifier:
    """Starts the classifier (port 0 picks a free port: see .port). Closing
    stops what runs beside the server: event watcher, run, stream workers, own pool."""
    own_pool = pool is None
    pool = pool or PipelinePool(config)
    models = ActiveModel(store)
    try:
        models.refresh()
    except ModelLoadError:
        pass  # logged; classifies as "no model" until a loadable version is activated
    reclassifier = Reclassifier(store, models, int(os.environ.get("VISAGE_RECLASSIFY_BATCH_ROWS", str(BATCH_ROWS))),
                                SharedWork.from_env(), ReclassifyMemory.from_env())
    classifier = Classifier(store, pool, models, reclassifier)
    servicer = ClassifyServicer(classifier, stream_workers=max_workers)
    server, port, health = build_server(
        lambda grpc_server: classify_pb2_grpc.add_ClassifyServiceServicer_to_server(servicer, grpc_server),
        [SERVICE_NAMES["classifier"]], address, max_workers=max_workers)
    watcher = EventWatcher(store, models, reclassifier, replica=os.environ.get(REPLICA_ENV) or socket.gethostname())
    if watch_events:
        watcher.start()

    def close() -> None:
        if watch_events:
            watcher.stop()
        reclassifier.stop()
        servicer.close()
        if own_pool:
            pool.close()

    return RunningClassifier(server, port, health, close=close, classifier=classifier)
