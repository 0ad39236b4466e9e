"""ClassifyService: names the faces of an image (or of embeddings) with the
active model version, and re-classifies the store on demand or when a new
version is activated.

`start(config, store, address)` runs it in-process (tests use port 0);
`python -m visage_classifier` runs it as a service."""
from __future__ import annotations

import contextvars
import hashlib
import queue
import socket
import threading
from concurrent import futures
from dataclasses import dataclass

import grpc
import numpy as np

from visage import convert, metrics
from visage.config import ClassifierSettings, Config
from visage.errors import InvalidArgument, answer_errors, item_status, register_status
from visage.faces.pipeline import FoundFace
from visage.faces.pool import PipelinePool
from visage.model import Predictor, distance_to_confidence
from visage.server import SERVICE_NAMES, RunningService, build_server, open_stream
from visage.store.base import NotFound, Store
from visage.store.records import EMBEDDING_DIM
from visage.v1 import classify_pb2, classify_pb2_grpc
from visage.v1 import resources_pb2 as pb
from visage_classifier.candidates import candidate_model, max_candidates
from visage_classifier.events import EventWatcher
from visage_classifier.models import ActiveModel, ModelLoadError, predict
from visage_classifier.incremental import ReclassifyMemory
from visage_classifier.reclassify import Reclassifier, SharedWork, follow
from visage_classifier.similar import FaceIndex, Filters, find_similar


DEFAULT_VERIFY_THRESHOLD = 0.5  # confidence of distance 0.6: dlib's same-person limit
STREAM_IN_FLIGHT = 8  # stream items worked on at once per call (back-pressure on the caller)


class DeadlineExpired(Exception):
    """The call's deadline passed before its work began."""


class StreamCancelled(Exception):
    """A stream item found its call cancelled before it was worked on."""


register_status(DeadlineExpired, grpc.StatusCode.DEADLINE_EXCEEDED)
register_status(StreamCancelled, grpc.StatusCode.CANCELLED)


def parse_embeddings(embeddings) -> np.ndarray:
    """Repeated Embedding messages → float32 [n, 128]; refuses wrong sizes and non-finite values."""
    for index, embedding in enumerate(embeddings):
        if len(embedding.values) != EMBEDDING_DIM:
            raise InvalidArgument(f"embeddings[{index}] has {len(embedding.values)} values; expected {EMBEDDING_DIM}")
    matrix = np.array([embedding.values for embedding in embeddings], dtype=np.float32).reshape(-1, EMBEDDING_DIM)
    if not np.isfinite(matrix).all():
        bad = int(np.flatnonzero(~np.isfinite(matrix).all(axis=1))[0])
        raise InvalidArgument(f"embeddings[{bad}] holds NaN or infinite values")
    return matrix


@dataclass
class Classifier:
    """What the RPCs share: the face pipeline, the active model, the store
    (display names) and the re-classifier."""
    store: Store
    pool: PipelinePool
    models: ActiveModel
    reclassifier: Reclassifier
    faces: FaceIndex | None = None  # FindSimilarFaces' embeddings in memory (made from the store when None)

    def __post_init__(self) -> None:
        if self.faces is None:
            self.faces = FaceIndex(self.store)

    def display_names(self, persona_ids: list[str]) -> dict[str, str]:
        """Names of the personas (deduplicated); a persona deleted since training is absent."""
        names = {}
        for persona_id in set(filter(None, persona_ids)):
            persona = self.store.get_persona(persona_id)
            if persona is not None:
                names[persona_id] = persona.display_name
        return names

    def classify_faces(self, predictor: Predictor | None, faces: list[FoundFace],
                       candidates: int = 1) -> tuple[list, int]:
        """The faces named by one model version (taken once by the caller)."""
        matrix = np.stack([face.embedding for face in faces]) if faces else np.zeros((0, EMBEDDING_DIM), np.float32)
        answers, lists = self.answer(predictor, matrix, candidates)
        classified = []
        for i, face in enumerate(faces):
            persona_id, display_name, confidence = answers[i]
            classified.append(classify_pb2.ClassifiedFace(
                box=convert.box(face.box), landmarks=convert.landmarks(face.landmarks),
                persona_id=persona_id, display_name=display_name, confidence=confidence, candidates=lists[i]))
        return classified, predictor.version if predictor is not None else 0

    def answer(self, predictor: Predictor | None, matrix: np.ndarray, candidates: int
               ) -> tuple[list[tuple[str, str, float]], list[list]]:
        """Per row: the model's answer (persona id, name, confidence; a deleted persona is
        answered as unknown) and up to `candidates` Candidate messages, nearest first."""
        answers = predict(predictor, matrix)
        model = candidate_model(predictor)
        found = model.candidates(matrix, candidates) if model is not None else [[] for _ in range(len(matrix))]
        wanted = set(answers.persona_ids) | {model.persona_ids[c.persona] for row in found for c in row}
        names = self.display_names(list(wanted))
        rows, lists = [], []
        for persona_id, confidence, row in zip(answers.persona_ids, answers.confidences.tolist(), found):
            known = persona_id in names
            rows.append((persona_id if known else "", names.get(persona_id, ""), confidence))
            if model is None and known:  # an artifact without parameters: its one answer
                lists.append([classify_pb2.Candidate(persona_id=persona_id, display_name=names[persona_id],
                                                     confidence=confidence, named=True, within_threshold=True)])
                continue
            listed = []
            for c in row:
                candidate_id = model.persona_ids[c.persona]
                if candidate_id not in names:  # deleted since training
                    continue
                named = known and candidate_id == persona_id
                # The named persona shows the graph's own confidence (the one answer; equal up to rounding).
                listed.append(classify_pb2.Candidate(
                    persona_id=candidate_id, display_name=names[candidate_id],
                    confidence=confidence if named else c.confidence, named=named,
                    within_threshold=True if named else c.within))
            lists.append(listed[:candidates])
        return rows, lists

    def classify_image(self, content: bytes, candidates: int = 1) -> tuple[list, int]:
        predictor = self.models.current()  # this request finishes on this version, whatever is swapped in
        analyzed = self.pool.analyze(content)  # pool.ANALYSIS_ERRORS: answered by visage.errors
        return self.classify_faces(predictor, analyzed.faces, candidates)

    def classify_embedding_item(self, embedding: classify_pb2.Embedding, candidates: int = 1) -> tuple[list, int]:
        matrix = parse_embeddings([embedding])
        predictor = self.models.current()
        answers, lists = self.answer(predictor, matrix, candidates)
        persona_id, display_name, confidence = answers[0]
        face = classify_pb2.ClassifiedFace(persona_id=persona_id, display_name=display_name, confidence=confidence,
                                           candidates=lists[0])
        return [face], predictor.version if predictor is not None else 0

    # ---- verify and find similar -------------------------------------------
    def embedding_of(self, face: classify_pb2.FaceInput, what: str) -> tuple[np.ndarray, str]:
        """(the embedding, the stored face id or "") of a FaceInput: a stored face (NOT_FOUND
        when there is none, erased included) or an image holding exactly one face."""
        kind = face.WhichOneof("face")
        if kind == "face_id":
            return self.stored_embedding(face.face_id), face.face_id
        if kind == "content":
            return self.single_face(face.content, what), ""
        raise InvalidArgument(f"{what} needs a face_id or an image (content)")

    def stored_embedding(self, face_id: str) -> np.ndarray:
        record = self.store.get_face(face_id)
        if record is None:
            raise NotFound(f"face {face_id} not found")
        return np.asarray(record.embedding, np.float32)

    def single_face(self, content: bytes, what: str) -> np.ndarray:
        faces = self.pool.analyze(content).faces
        if len(faces) != 1:
            raise InvalidArgument(f"{what}: the image holds {len(faces)} faces; exactly one is needed")
        return np.asarray(faces[0].embedding, np.float32)

    def verify(self, request: classify_pb2.VerifyFacesRequest) -> classify_pb2.VerifyFacesResponse:
        if not request.HasField("face"):
            raise InvalidArgument("face is required")
        other = request.WhichOneof("other")
        if other is None:
            raise InvalidArgument("other_face or persona_id is required")
        if not 0.0 <= request.threshold <= 1.0 or not np.isfinite(request.threshold):
            raise InvalidArgument(f"threshold must be between 0 and 1, got {request.threshold}")
        if other == "persona_id" and request.threshold:
            raise InvalidArgument("threshold applies to two faces only; a persona is judged by the model's threshold")
        predictor = self.models.current()
        embedding, _ = self.embedding_of(request.face, "face")
        if other == "persona_id":
            if self.store.get_persona(request.persona_id) is None:
                raise NotFound(f"persona {request.persona_id} not found")
            model = candidate_model(predictor)
            found = model.against(embedding, request.persona_id) if model is not None else None
            version = predictor.version if predictor is not None else 0
            if found is None:  # no model, a persona the version does not know, or vetoed for this face
                return classify_pb2.VerifyFacesResponse(same_person=False, model_version=version,
                                                        basis=classify_pb2.VERIFY_BASIS_MODEL)
            return classify_pb2.VerifyFacesResponse(
                same_person=found.within, confidence=found.confidence, distance=found.distance,
                threshold=float(distance_to_confidence(found.limit)), model_version=version,
                basis=classify_pb2.VERIFY_BASIS_MODEL)
        other_embedding, _ = self.embedding_of(request.other_face, "other_face")
        distance = float(np.linalg.norm(embedding - other_embedding))
        confidence = float(distance_to_confidence(distance))
        threshold = request.threshold or DEFAULT_VERIFY_THRESHOLD
        response = classify_pb2.VerifyFacesResponse(confidence=confidence, distance=distance, threshold=threshold,
                                                    same_person=confidence >= threshold,
                                                    basis=classify_pb2.VERIFY_BASIS_DISTANCE)
        if predictor is not None and not request.threshold:
            answers, _ = self.answer(predictor, np.stack([embedding, other_embedding]), 1)
            first, second = answers[0][0], answers[1][0]
            if first and second:  # the model names both faces: its naming decides
                response.same_person = first == second
                response.basis = classify_pb2.VERIFY_BASIS_MODEL
                response.model_version = predictor.version
        return response

    def find_similar(self, request: classify_pb2.FindSimilarFacesRequest
                     ) -> classify_pb2.FindSimilarFacesResponse:
        kind = request.WhichOneof("query")
        exclude = ""
        if kind == "face_id":
            query, exclude = self.stored_embedding(request.face_id), request.face_id
            key = request.face_id
        elif kind == "content":
            query = self.single_face(request.content, "content")
            key = hashlib.blake2b(query.tobytes(), digest_size=12).hexdigest()
        elif kind == "embedding":
            query = parse_embeddings([request.embedding])[0]
            key = hashlib.blake2b(query.tobytes(), digest_size=12).hexdigest()
        else:
            raise InvalidArgument("a face_id, an image (content) or an embedding is required")
        if request.persona_id and self.store.get_persona(request.persona_id) is None:
            raise NotFound(f"persona {request.persona_id} not found")
        filters = Filters(request.persona_id, request.unlabelled_only, request.exclude_hidden)
        page, token = find_similar(self.store, self.faces, query, filters, key, request.page_size,
                                   request.page_token, exclude)
        return classify_pb2.FindSimilarFacesResponse(faces=[classify_pb2.SimilarFace(
            face_id=n.face.face_id, image_id=n.face.image_id, box=convert.box(n.face.box), distance=n.distance,
            confidence=n.confidence, persona_id=n.persona_id) for n in page], next_page_token=token)


@answer_errors
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
            raise DeadlineExpired("deadline expired before the image was analysed")
        faces, version = self._classifier.classify_image(request.content, max_candidates(request.max_candidates))
        return classify_pb2.ClassifyResponse(faces=faces, model_version=version)

    def ClassifyEmbeddings(self, request, context):
        if not request.embeddings:
            raise InvalidArgument("embeddings is required (at least one 128-d embedding)")
        candidates = max_candidates(request.max_candidates)
        matrix = parse_embeddings(request.embeddings)
        predictor = self._classifier.models.current()
        version = predictor.version if predictor is not None else 0
        answers, lists = self._classifier.answer(predictor, matrix, candidates)
        predictions = [pb.Prediction(persona_id=persona_id, confidence=confidence, model_version=version)
                       for persona_id, _name, confidence in answers]
        return classify_pb2.ClassifyEmbeddingsResponse(
            predictions=predictions, model_version=version,
            candidates=[classify_pb2.CandidateList(candidates=row) for row in lists])

    def VerifyFaces(self, request, context):
        return self._classifier.verify(request)

    def FindSimilarFaces(self, request, context):
        return self._classifier.find_similar(request)

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
                    raise StreamCancelled("the stream was cancelled")
                kind = item.WhichOneof("input")
                candidates = max_candidates(item.max_candidates)
                if kind == "content":
                    faces, version = self._classifier.classify_image(item.content, candidates)
                elif kind == "embedding":
                    faces, version = self._classifier.classify_embedding_item(item.embedding, candidates)
                else:
                    raise InvalidArgument("item has neither content nor embedding")
                return classify_pb2.ClassifyStreamResponse(request_id=item.request_id, faces=faces,
                                                           model_version=version)
            except Exception as error:  # noqa: BLE001 - this item fails (a bug too: INTERNAL); the stream goes on
                code, message = item_status(error, f"ClassifyStream item {item.request_id!r}")
                return classify_pb2.ClassifyStreamResponse(request_id=item.request_id, error_code=code.name,
                                                           error_message=message)
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
    reclassifier = Reclassifier(store, models, ClassifierSettings.read("batch_rows"),
                                SharedWork.from_env(), ReclassifyMemory.from_env())
    classifier = Classifier(store, pool, models, reclassifier)
    servicer = ClassifyServicer(classifier, stream_workers=max_workers)
    server, port, health = build_server(
        lambda grpc_server: classify_pb2_grpc.add_ClassifyServiceServicer_to_server(servicer, grpc_server),
        [SERVICE_NAMES["classifier"]], address, max_workers=max_workers)
    # VISAGE_REPLICA_ID names this replica's event cursor (default: the host name, a pod's name).
    replica = ClassifierSettings.read("replica_id") or socket.gethostname()
    watcher = EventWatcher(store, models, reclassifier, replica=replica)
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
