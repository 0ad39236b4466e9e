"""QueryService: persona and label writes, and every read of the catalogue.

Handlers raise plain exceptions (validation, store NotFound, ...) whose text says
what was wrong; this module registers the query service's own kinds with their
gRPC status in visage.errors (every service's one mapping, which already knows
store errors, RoleRequired and bad page requests), so a bad request never takes
the service down or half-writes data.
"""
from __future__ import annotations

import dataclasses
import logging

import grpc
from google.api import httpbody_pb2
from google.protobuf import empty_pb2

from visage import convert, nonblocking, paging
from visage.auth import identity
from visage.auth.roles import Role
from visage.config import Config
from visage.errors import answer_errors, end_stream, register_status
from visage.server import SERVICE_NAMES, RunningService, build_server, open_stream
from visage.store import NotFound, Store
from visage.store.records import LabelRecord, UnknownFaceKey
from visage.v1 import query_pb2, query_pb2_grpc
from visage.v1 import resources_pb2 as pb
from visage_query import events, validation
from visage_query.catalogue import Catalogue, LabelIndex
from visage_query.export import backup_chunks, export_persona
from visage_query.retention import EventCompactor
from visage_query.clusters import SuggestedPeople
from visage_query.thumbnails import ThumbnailCache

log = logging.getLogger(__name__)

# Image bytes and crops never change under their id (a SHA-256 of the bytes, and
# that id plus the face's index): browsers may keep them (the gateway passes
# gRPC metadata on as HTTP headers).
IMMUTABLE = (("cache-control", "private, max-age=604800, immutable"),)


class ShuttingDown(Exception):
    pass


class AlreadyExists(Exception):
    pass


register_status(events.InvalidCursor, grpc.StatusCode.INVALID_ARGUMENT)
register_status(AlreadyExists, grpc.StatusCode.ALREADY_EXISTS)
register_status(ShuttingDown, grpc.StatusCode.UNAVAILABLE)  # WatchEvents ended by a stop: reconnect elsewhere


@answer_errors
class QueryServicer(query_pb2_grpc.QueryServiceServicer):
    def __init__(self, store: Store, suggested: SuggestedPeople | None = None):
        self.store = store
        self.catalogue = Catalogue(store)
        self.suggested = suggested or SuggestedPeople(store)
        # One poller of the event log for the watches and the thumbnail cache's erasures, from the
        # first of them on (it reads every event from then on: none while nobody needs it).
        self._event_log = events.EventLog(store)
        self.thumbnails = ThumbnailCache(follow=self._event_log.start)
        self._event_log.subscribe(self.thumbnails.forget_erased)

    def close(self) -> None:
        """Ends open WatchEvents streams (UNAVAILABLE, so clients reconnect elsewhere)."""
        self._event_log.stop(ShuttingDown("the query service is shutting down; reconnect with the last cursor you saw"))
        self.suggested.stop()

    # ---- personas --------------------------------------------------------
    def CreatePersona(self, request, context):
        name = validation.display_name(request.persona.display_name)
        self._refuse_duplicate_name(name, request.force)
        return convert.persona(self.store.create_persona(name))

    def GetPersona(self, request, context):
        return self.catalogue.persona(validation.required_id(request.persona_id, "persona_id"))

    def ListPersonas(self, request, context):
        query = validation.search_query(request.query)
        scope = f"personas/{request.include_hidden:d}/{query}" if query or request.include_hidden else "personas"
        personas, token = paging.offset_list(scope, request, lambda offset, size: self.catalogue.personas(
            offset, size, query, request.include_hidden))
        return query_pb2.ListPersonasResponse(personas=personas, next_page_token=token)

    def UpdatePersona(self, request, context):
        persona_id = validation.required_id(request.persona.persona_id, "persona.persona_id")
        name = validation.display_name(request.persona.display_name)
        self._refuse_duplicate_name(name, request.force, persona_id)
        self.store.rename_persona(persona_id, name)
        return self.catalogue.persona(persona_id)

    def DeletePersona(self, request, context):
        self.ErasePersona(request, context)
        return empty_pb2.Empty()

    def ErasePersona(self, request, context):
        if request.erase_faces:  # erasure: more than deleting a persona (labeller)
            identity.require_role(Role.ADMIN, "erase_faces (erasure)")
        return self._erased(self.store.delete_persona(validation.required_id(request.persona_id, "persona_id"),
                                                      request.erase_faces))

    def ListPersonaFaces(self, request, context):
        persona_id = validation.required_id(request.persona_id, "persona_id")
        kind = validation.face_kind(request.kind)
        faces, token = paging.offset_list(
            f"persona-faces/{persona_id}/{kind}", request,
            lambda offset, size: self.catalogue.persona_faces(persona_id, kind, offset, size))
        return query_pb2.ListPersonaFacesResponse(faces=faces, next_page_token=token)

    # ---- labels and faces ------------------------------------------------
    def LabelFace(self, request, context):
        label = self._label_record(request)
        self.store.put_label(label)  # NotFound for an unknown face or persona
        return self.catalogue.face(label.face_id)

    @staticmethod
    def _label_record(request) -> LabelRecord:
        return LabelRecord(face_id=validation.required_id(request.face_id, "face_id"),
                           persona_id=validation.required_id(request.persona_id, "persona_id"),
                           verdict=validation.verdict(request.verdict),
                           labelled_by=identity.current_subject())

    def UnlabelFace(self, request, context):
        face_id = validation.required_id(request.face_id, "face_id")
        persona_id = validation.required_id(request.persona_id, "persona_id")
        self.catalogue.require_face(face_id)
        self.catalogue.require_persona(persona_id)
        self.store.delete_label(face_id, persona_id)  # no such label: nothing to undo (idempotent)
        return self.catalogue.face(face_id)

    def GetFace(self, request, context):
        face_id = validation.required_id(request.face_id, "face_id")
        if request.include_embedding:  # biometric data: more than GetFace's own least role (viewer)
            identity.require_role(Role.OPERATOR, "include_embedding (biometric data)")
        return self.catalogue.face(face_id, request.include_embedding)

    def ListUnknownFaces(self, request, context):
        size = paging.page_size(request.page_size)
        key = paging.decode_key_token(request.page_token, "unknown-faces", (float, str, int, str))
        faces, last = self.catalogue.unknown_faces(UnknownFaceKey(*key) if key else None, size)
        token = paging.encode_key_token("unknown-faces", list(dataclasses.astuple(last))) if last else ""
        return query_pb2.ListUnknownFacesResponse(faces=faces, next_page_token=token)

    def GetFaceCrop(self, request, context):
        face_id = validation.required_id(request.face_id, "face_id")
        face = self.catalogue.require_face(face_id)
        if request.upright:
            return self._upright_crop(face, context)
        if not face.crop_jpeg:
            raise NotFound(f"face {face_id!r} has no stored crop")
        context.send_initial_metadata(IMMUTABLE)
        return httpbody_pb2.HttpBody(content_type="image/jpeg", data=face.crop_jpeg)

    def _upright_crop(self, face, context) -> httpbody_pb2.HttpBody:
        image = self.store.get_image(face.image_id)
        if image is None:
            raise NotFound(f"the image of face {face.face_id!r} is not stored")
        crop = self.thumbnails.upright_crop(image.image_id, face.face_id, face.box, (image.width, image.height),
                                            lambda: self._image_content(image.image_id))
        context.send_initial_metadata(IMMUTABLE)
        return httpbody_pb2.HttpBody(content_type="image/jpeg", data=crop)

    def _image_content(self, image_id: str) -> bytes:
        content = self.store.get_image_content(image_id)
        if content is None:  # erased meanwhile
            raise NotFound(f"image {image_id!r} not found")
        return content

    # ---- images ----------------------------------------------------------
    def ListImages(self, request, context):
        images, token = paging.offset_list("images", request, self.catalogue.images)
        return query_pb2.ListImagesResponse(images=images, next_page_token=token)

    def GetImage(self, request, context):
        return self.catalogue.image(validation.required_id(request.image_id, "image_id"))

    def GetImageContent(self, request, context):
        image_id = validation.required_id(request.image_id, "image_id")
        size = validation.thumbnail_size(request.size)
        record = self.store.get_image(image_id)
        content = self.store.get_image_content(image_id) if record and not size else None
        if record:
            context.send_initial_metadata(IMMUTABLE)
        if size and record:
            thumbnail = self.thumbnails.thumbnail(image_id, size, lambda: self._image_content(image_id))
            return httpbody_pb2.HttpBody(content_type="image/jpeg", data=thumbnail)
        if content is None:
            raise NotFound(f"image {image_id!r} not found")
        return httpbody_pb2.HttpBody(content_type=record.content_type or "application/octet-stream", data=content)

    # ---- events ----------------------------------------------------------
    @nonblocking.mark
    def WatchEvents(self, request, context, send):
        # Holds no thread while open (visage.nonblocking: `send` answers later, from the event log's
        # deliveries). Open streams are capped for every service alike (visage.guard.StreamGuard).
        types = validation.event_types(list(request.types))
        self._event_log.start()  # its cursor is read before this watch's first read: it misses nothing
        start = request.after_cursor or self.store.latest_cursor()
        first_batch = events.read_after(self.store, start)  # validates the cursor
        open_stream(context)  # the stream is open even before the first event
        watch = self._event_log.watch(start, types, first_batch, lambda record: send(convert.event(record)),
                                      lambda error: end_stream(context, send, error, "WatchEvents"))
        nonblocking.on_end(context, watch.close)  # client cancel, deadline, or its status sent

    # ---- erasure and export (privacy) -------------------------------------
    def DeleteImage(self, request, context):
        return self._erased(self.store.delete_image(validation.required_id(request.image_id, "image_id")))

    def DeleteFace(self, request, context):
        return self._erased(self.store.delete_face(validation.required_id(request.face_id, "face_id")))

    def _erased(self, erasure) -> query_pb2.Erasure:
        """What went leaves this replica's cache at once (others follow the ERASED event)."""
        self.thumbnails.forget(erasure.image_ids, erasure.face_ids)
        return convert.erasure(erasure)

    def ExportPersona(self, request, context):
        yield from export_persona(self.store, validation.required_id(request.persona_id, "persona_id"))

    def Backup(self, request, context):
        yield from backup_chunks(self.store)

    # ---- organising many faces (suggested people, batches, merge, hide) ----
    def _refuse_duplicate_name(self, name: str, force: bool, persona_id: str = "") -> None:
        """Two personas of one name (ignoring case) are refused unless forced: usually a slip."""
        if force:
            return
        key = name.casefold()
        for record in self.store.list_personas():
            if record.display_name.casefold() == key and record.persona_id != persona_id:
                raise AlreadyExists(f"a persona named {record.display_name!r} already exists "
                                    f"({record.persona_id}); pick it, or set force to create another")

    def ListFaceClusters(self, request, context):
        size = paging.page_size(request.page_size, default=20)
        samples = validation.sample_size(request.sample_size)
        stale = self.suggested.stale  # read before the result: a computation ending between them is not missed
        result = self.suggested.current()
        offset, = paging.decode_token(request.page_token, "face-clusters", 1)
        clusters = self._current_clusters(result)
        page = clusters[offset:offset + size]
        sample_ids = [face_id for _cluster, face_ids in page for face_id in face_ids[:samples]]
        faces = {face.face_id: face for face in self.catalogue.faces(sample_ids)}
        messages = [query_pb2.FaceCluster(cluster_id=cluster.cluster_id, face_ids=face_ids, quality=cluster.quality,
                                          sample_faces=[faces[i] for i in face_ids[:samples] if i in faces])
                    for cluster, face_ids in page]
        token = paging.encode_token("face-clusters", [offset + size]) if offset + size < len(clusters) else ""
        return query_pb2.ListFaceClustersResponse(
            clusters=messages, next_page_token=token, unknown_faces=result.unknown_faces,
            clustered_faces=sum(len(face_ids) for _cluster, face_ids in clusters), stale=stale)

    def _current_clusters(self, result) -> list[tuple]:
        """The last computation's groups less faces labelled or hidden since (the
        next computation catches up within a second; the UI must not offer them)."""
        labels = LabelIndex.load(self.store)
        hidden = self.store.hidden_ids("face")
        current = []
        for cluster in result.clusters:
            face_ids = [result.face_ids[row] for row in cluster.members]
            face_ids = [face_id for face_id in face_ids if face_id not in hidden and not labels.has_belongs(face_id)]
            if len(face_ids) >= 2:
                current.append((cluster, face_ids))
        current.sort(key=lambda pair: -len(pair[1]))
        return current

    def BatchLabelFaces(self, request, context):
        persona_id = validation.required_id(request.persona_id, "persona_id")
        pairs = validation.batch_labels(request.labels)
        self.catalogue.require_persona(persona_id)
        face_ids = [face_id for face_id, _verdict in pairs]
        found = {record.face_id for record in self.store.get_faces(face_ids)}
        missing = [face_id for face_id in face_ids if face_id not in found]
        if missing:
            raise NotFound(f"{len(missing)} of the faces were not found (first: {missing[0]!r}); nothing was labelled")
        labeller = identity.current_subject()
        self.store.put_labels([LabelRecord(face_id, persona_id, verdict, labeller) for face_id, verdict in pairs])
        return query_pb2.BatchLabelFacesResponse(faces=self.catalogue.faces(face_ids))

    def MergePersonas(self, request, context):
        target = validation.required_id(request.persona_id, "persona_id")
        sources = validation.merge_sources(list(request.source_persona_ids), target)
        for persona_id in (target, *sources):
            self.catalogue.require_persona(persona_id)
        moved = []
        for source in sources:  # rejections first, so a face a source claims ends up BELONGS
            for verdict in (pb.VERDICT_NOT_BELONGS, pb.VERDICT_BELONGS):
                moved += [LabelRecord(label.face_id, target, verdict, label.labelled_by, label.create_time)
                          for label in self.store.labels_of_persona(source, verdict)]
        self.store.put_labels(moved)  # labels first: a failure before the deletes loses nothing
        for source in sources:
            self.store.delete_persona(source)
        return self.catalogue.persona(target)

    def SetFaceHidden(self, request, context):
        face_id = validation.required_id(request.face_id, "face_id")
        self.store.set_hidden("face", face_id, request.hidden)
        return self.catalogue.face(face_id)

    def SetPersonaHidden(self, request, context):
        persona_id = validation.required_id(request.persona_id, "persona_id")
        self.store.set_hidden("persona", persona_id, request.hidden)
        return self.catalogue.persona(persona_id)


def start(config: Config, store: Store, address: str,
          max_workers: int = 16, max_watchers: int | None = None) -> RunningService:
    """Starts the service on `address` (tests pass "127.0.0.1:0"). Draining
    ends open WatchEvents streams, which would otherwise hold a graceful stop
    for the whole grace period."""
    servicer = QueryServicer(store, SuggestedPeople(store).start())
    server, port, health_servicer = build_server(
        lambda grpc_server: query_pb2_grpc.add_QueryServiceServicer_to_server(servicer, grpc_server),
        [SERVICE_NAMES["query"]], address, max_workers, max_streams=max_watchers)
    compactor = EventCompactor(store, config.event_retention_days)
    compactor.start()
    return RunningService(server, port, health_servicer, drain=servicer.close, close=compactor.stop)
