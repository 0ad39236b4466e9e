"""ExportPersona: a subject-access export of one persona as a zip, built while it
streams, so memory stays at about one image however many faces the persona has.
Backup: the whole store's archive (visage.store.archive), streamed the same way.

The zip holds persona.json (the persona and its BELONGS labels: face, image, box,
who labelled and when; for a face drawn by hand, who drew it and when), crops/<face id>.jpg
and images/<image id><ext> (the stored originals, metadata already stripped at ingest)."""
from __future__ import annotations

import json
import mimetypes
import zipfile
from collections.abc import Iterator

from visage.store import NotFound, Store, archive
from visage.v1 import query_pb2
from visage.v1 import resources_pb2 as pb

CHUNK_BYTES = 1024 * 1024  # one message per MiB of zip


class _Sink:
    """A write-only, unseekable file for ZipFile (which then writes data descriptors):
    what it is given waits in `pending` until the exporter sends it."""

    def __init__(self) -> None:
        self.pending = bytearray()

    def write(self, data: bytes) -> int:
        self.pending += data
        return len(data)

    def flush(self) -> None:
        pass

    def take(self, at_least: int = 0) -> Iterator[bytes]:
        while self.pending and len(self.pending) >= max(at_least, 1):
            size = min(CHUNK_BYTES, len(self.pending))
            chunk, self.pending = bytes(self.pending[:size]), self.pending[size:]
            yield chunk


def _extension(content_type: str) -> str:
    return {"image/jpeg": ".jpg"}.get(content_type) or mimetypes.guess_extension(content_type or "") or ".bin"


def export_persona(store: Store, persona_id: str) -> Iterator[query_pb2.ExportPersonaChunk]:
    """The zip as chunks with progress (files written of files to write). Raises NotFound."""
    persona = store.get_persona(persona_id)
    if persona is None:
        raise NotFound(f"persona {persona_id!r} not found")
    labels = store.labels_of_persona(persona_id, pb.VERDICT_BELONGS)
    faces = {face.face_id: face for face in store.get_faces([label.face_id for label in labels])}
    image_ids = list(dict.fromkeys(face.image_id for face in faces.values()))
    total = 1 + len(faces) + len(image_ids)
    sink = _Sink()
    done = 0

    def progress(data: bytes = b"") -> query_pb2.ExportPersonaChunk:
        return query_pb2.ExportPersonaChunk(data=data, files_done=done, files_total=total)

    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED) as archive:  # JPEGs do not compress
        archive.writestr("persona.json", json.dumps(_summary(persona, labels, faces), indent=2))
        done += 1
        for face in faces.values():
            archive.writestr(f"crops/{face.face_id}.jpg", face.crop_jpeg)
            done += 1
            yield from map(progress, sink.take(CHUNK_BYTES))
        for image_id in image_ids:
            image, content = store.get_image(image_id), store.get_image_content(image_id)
            if image is not None and content is not None:  # erased meanwhile: left out
                archive.writestr(f"images/{image_id}{_extension(image.content_type)}", content)
            done += 1
            yield progress()  # progress even while one image fills less than a chunk
            yield from map(progress, sink.take(CHUNK_BYTES))
    yield from map(progress, sink.take())


def _summary(persona, labels, faces) -> dict:
    return {
        "persona_id": persona.persona_id, "display_name": persona.display_name,
        "create_time": persona.create_time,
        "labels": [{"face_id": label.face_id, "image_id": faces[label.face_id].image_id,
                    "box": list(faces[label.face_id].box), "labelled_by": label.labelled_by,
                    "create_time": label.create_time, "crop": f"crops/{label.face_id}.jpg",
                    **_drawn(faces[label.face_id])}
                   for label in labels if label.face_id in faces],
    }


def _drawn(face) -> dict:
    """Who drew a face the detector missed, and when (IngestService.AddFace); nothing for a detected one."""
    return {"drawn_by": face.drawn_by, "draw_time": face.create_time} if face.drawn_by else {}


def backup_chunks(store: Store) -> Iterator[query_pb2.BackupChunk]:
    """The plain archive as messages of about CHUNK_BYTES, each with the progress so far (a
    message goes out at least after every page of images, so a watcher sees it move)."""
    state = archive.Progress()
    pending = bytearray()
    moved = [False]

    def progress(now: archive.Progress) -> None:
        state.faces_done, state.faces_total, state.phase = now.faces_done, now.faces_total, now.phase
        moved[0] = True

    def message(data: bytes) -> query_pb2.BackupChunk:
        return query_pb2.BackupChunk(data=data, faces_done=state.faces_done, faces_total=state.faces_total,
                                     phase=state.phase)

    for data in archive.backup(store, progress):
        pending += data
        while len(pending) >= CHUNK_BYTES:
            yield message(bytes(pending[:CHUNK_BYTES]))
            del pending[:CHUNK_BYTES]
            moved[0] = False
        if moved[0]:
            yield message(bytes(pending))
            pending.clear()
            moved[0] = False
    yield message(bytes(pending))
