"""QueryService: persona and label writes, and every read of the catalogue.

Handlers raise plain exceptions (validation, store NotFound, ...); one mapping
(`status_for`) turns each into a gRPC status with a message saying what was
wrong, so a bad request never takes the service down or half-writes data.
"""
from __future__ import annotations

import functools
import logging
import threading

import grpc
from google.api import httpbody_pb2
from google.protobuf import empty_pb2

from visage import convert, paging
from visage.config import Config
from visage.errors import store_status
from visage.server import SERVICE_NAMES, RunningService, build_server
from visage.store import NotFound, Store, StoreError
from visage.store.records import LabelRecord
from visage.v1 import query_pb2, query_pb2_grpc
from visage_query import events, validation
from visage_query.catalogue import Catalogue
from visage_query.export import export_persona
from visage_query.retention import EventCompactor

log = logging.getLogger(__name__)

# Each open WatchEvents stream holds a worker thread for its lifetime, so the
# pool is larger than usual and streams are capped below it: unary calls
# always find a free thread.
MAX_WORKERS = 64
MAX_WATCHERS = 48


class TooManyWatchers(Exception):
    pass


class ShuttingDown(Exception):
    pass


def status_for(error: Exception, rpc_name: str) -> tuple[grpc.StatusCode, str]:
    if isinstance(error, (validation.InvalidArgument, paging.InvalidPageRequest, events.InvalidCursor)):
        return grpc.StatusCode.INVALID_ARGUMENT, str(error)
    if isinstance(error, TooManyWatchers):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(error)
    if isinstance(error, ShuttingDown):
        return grpc.StatusCode.UNAVAILABLE, str(error)
    if isinstance(error, StoreError):
        return store_status(error, rpc_name)
    log.exception("%s failed", rpc_name, exc_info=error)
    return (grpc.StatusCode.INTERNAL,
            f"{rpc_name} failed with an internal error ({type(error).__name__}); see the query service log")


def unary(method):
    @functools.wraps(method)
    def handler(self, request, context):
        try:
            return method(self, request, context)
        except Exception as error:  # noqa: BLE001 - mapped to a status, never crashes the server
            code, message = status_for(error, method.__name__)
        context.abort(code, message)
    return handler


def streaming(method):
    @functools.wraps(method)
    def handler(self, request, context):
        try:
            yield from method(self, request, context)
        except Exception as error:  # noqa: BLE001
            code, message = status_for(error, method.__name__)
        else:
            return
        context.abort(code, message)
    return handler


class QueryServicer(query_pb2_grpc.QueryServiceServicer):
    def __init__(self, store: Store, max_watchers: int = MAX_WATCHERS):
        self.store = store
        self.catalogue = Catalogue(store)
        self._closing = threading.Event()
        self._watch_slots = threading.BoundedSemaphore(max_watchers)
        self._max_watchers = max_watchers

    def close(self) -> None:
        """Ends open WatchEvents streams (UNAVAILABLE, so clients reconnect elsewhere)."""
        self._closing.set()

    # ---- personas --------------------------------------------------------
    @unary
    def CreatePersona(self, request, context):
        name = validation.display_name(request.persona.display_name)
        return convert.persona(self.store.create_persona(name))

    @unary
    def GetPersona(self, request, context):
        return self.catalogue.persona(validation.required_id(request.persona_id, "persona_id"))

    @unary
    def ListPersonas(self, request, context):
        personas, token = paging.offset_list("personas", request, self.catalogue.personas)
        return query_pb2.ListPersonasResponse(personas=personas, next_page_token=token)

    @unary
    def UpdatePersona(self, request, context):
        persona_id = validation.required_id(request.persona.persona_id, "persona.persona_id")
        name = validation.display_name(request.persona.display_name)
        self.store.rename_persona(persona_id, name)
        return self.catalogue.persona(persona_id)

    @unary
    def DeletePersona(self, request, context):
        self.store.delete_persona(validation.required_id(request.persona_id, "persona_id"), request.erase_faces)
        return empty_pb2.Empty()

    @unary
    def ListPersonaFaces(self, request, context):
        persona_id = validation.required_id(request.persona_id, "persona_id")
        kind = validation.face_kind(request.kind)
        faces, token = paging.offset_list(
            f"persona-faces/{persona_id}/{kind}", request,
            lambda offset, size: self.catalogue.persona_faces(persona_id, kind, offset, size))
        return query_pb2.ListPersonaFacesResponse(faces=faces, next_page_token=token)

    # ---- labels and faces ------------------------------------------------
    @unary
    def LabelFace(self, request, context):
        label = self._label_record(request)
        self.store.put_label(label)  # NotFound for an unknown face or persona
        return self.catalogue.face(label.face_id)

    @staticmethod
    def _label_record(request) -> LabelRecord:
        return LabelRecord(face_id=validation.required_id(request.face_id, "face_id"),
                           persona_id=validation.required_id(request.persona_id, "persona_id"),
                           verdict=validation.verdict(request.verdict),
                           labelled_by=validation.labelled_by(request.labelled_by))

    @unary
    def UnlabelFace(self, request, context):
        face_id = validation.required_id(request.face_id, "face_id")
        persona_id = validation.required_id(request.persona_id, "persona_id")
        self.catalogue.require_face(face_id)
        self.catalogue.require_persona(persona_id)
        self.store.delete_label(face_id, persona_id)  # no such label: nothing to undo (idempotent)
        return self.catalogue.face(face_id)

    @unary
    def GetFace(self, request, context):
        face_id = validation.required_id(request.face_id, "face_id")
        if request.include_embedding:
            require_operator_for_embeddings(context)
        return self.catalogue.face(face_id, request.include_embedding)

    @unary
    def ListUnknownFaces(self, request, context):
        size = paging.page_size(request.page_size)
        image_offset, face_offset = paging.decode_token(request.page_token, "unknown-faces", 2)
        faces, next_position = self.catalogue.unknown_faces(image_offset, face_offset, size)
        token = paging.encode_token("unknown-faces", next_position) if next_position else ""
        return query_pb2.ListUnknownFacesResponse(faces=faces, next_page_token=token)

    @unary
    def GetFaceCrop(self, request, context):
        face_id = validation.required_id(request.face_id, "face_id")
        face = self.catalogue.require_face(face_id)
        if not face.crop_jpeg:
            raise NotFound(f"face {face_id!r} has no stored crop")
        return httpbody_pb2.HttpBody(content_type="image/jpeg", data=face.crop_jpeg)

    # ---- images ----------------------------------------------------------
    @unary
    def ListImages(self, request, context):
        images, token = paging.offset_list("images", request, self.catalogue.images)
        return query_pb2.ListImagesResponse(images=images, next_page_token=token)

    @unary
    def GetImage(self, request, context):
        return self.catalogue.image(validation.required_id(request.image_id, "image_id"))

    @unary
    def GetImageContent(self, request, context):
        image_id = validation.required_id(request.image_id, "image_id")
        record = self.store.get_image(image_id)
        content = self.store.get_image_content(image_id) if record else None
        if content is None:
            raise NotFound(f"image {image_id!r} not found")
        return httpbody_pb2.HttpBody(content_type=record.content_type or "application/octet-stream", data=content)

    # ---- events ----------------------------------------------------------
    @streaming
    def WatchEvents(self, request, context):
        types = validation.event_types(list(request.types))
        if not self._watch_slots.acquire(blocking=False):
            raise TooManyWatchers(f"too many open WatchEvents streams (limit {self._max_watchers}); retry later")
        try:
            cancelled = threading.Event()
            context.add_callback(cancelled.set)  # client cancel, deadline, or server stop
            start = request.after_cursor or self.store.latest_cursor()
            first_batch = events.read_after(self.store, start)  # validates the cursor
            context.send_initial_metadata(())  # the stream is open even before the first event
            for record in events.follow(self.store, start, types, cancelled, self._closing.is_set, first_batch):
                yield convert.event(record)
            if self._closing.is_set() and context.is_active():
                raise ShuttingDown("the query service is shutting down; reconnect with the last cursor you saw")
        finally:
            self._watch_slots.release()

    # ---- erasure and export (privacy) -------------------------------------
    @unary
    def DeleteImage(self, request, context):
        return convert.erasure(self.store.delete_image(validation.required_id(request.image_id, "image_id")))

    @unary
    def DeleteFace(self, request, context):
        return convert.erasure(self.store.delete_face(validation.required_id(request.face_id, "face_id")))

    @streaming
    def ExportPersona(self, request, context):
        yield from export_persona(self.store, validation.required_id(request.persona_id, "persona_id"))


def require_operator_for_embeddings(context) -> None:
    """Hook: GetFace's include_embedding (biometric data) needs the operator role. Visage
    has no identities yet, so every caller passes; the identity work (issue 12) makes this
    abort with PERMISSION_DENIED unless the caller's token carries the operator role."""


def start(config: Config, store: Store, address: str,
          max_workers: int = MAX_WORKERS, max_watchers: int = MAX_WATCHERS) -> RunningService:
    """Starts the service on `address` (tests pass "127.0.0.1:0"). Draining
    ends open WatchEvents streams, which would otherwise hold a graceful stop
    for the whole grace period."""
    servicer = QueryServicer(store, max_watchers)
    server, port, health_servicer = build_server(
        lambda grpc_server: query_pb2_grpc.add_QueryServiceServicer_to_server(servicer, grpc_server),
        [SERVICE_NAMES["query"]], address, max_workers)
    compactor = EventCompactor(store, config.event_retention_days)
    compactor.start()
    return RunningService(server, port, health_servicer, drain=servicer.close, close=compactor.stop)
