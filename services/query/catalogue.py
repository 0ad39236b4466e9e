"""Reads of the catalogue: store records joined with their labels and the
stored predictions into the messages the UI shows.

Two rules shape every read (see the preamble's cross-part interfaces):
- the last verdict stands: a face's stored prediction is its verdict, whichever
  version wrote it (re-classification rewrites only verdicts that change); it
  names the active version once that version's full run has covered the store;
- labels win: a face labelled BELONGS shows its label, never a prediction, and
  a face rejected (NOT_BELONGS) for a persona is never listed as predicted for it.

Lists load every label once per request (LabelIndex) instead of asking the
store face by face: labels are made by hand, so they are few next to faces.
Predictions are many (one per face): lists read them in batches
(get_predictions) and persona counts come from the store's per-persona counts
(count_labels, count_predictions), never from reading every prediction.
"""
from __future__ import annotations

import unicodedata
from collections import defaultdict
from collections.abc import Iterable

import dataclasses

from visage import convert
from visage.store import NotFound, Store
from visage.store.base import RECLASSIFIED_VERSION_KEY
from visage.store.records import FaceRecord, LabelRecord, PersonaRecord, PredictionRecord, UnknownFaceKey
from visage.v1 import query_pb2
from visage.v1 import resources_pb2 as pb


def search_key(text: str) -> str:
    """Text as persona search compares it: case-folded, accents dropped."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return "".join(char for char in decomposed if not unicodedata.combining(char))


class LabelIndex:
    """Every label, by face and by persona, from one store read."""

    def __init__(self, labels: Iterable[LabelRecord]):
        self._by_face: dict[str, list[LabelRecord]] = defaultdict(list)
        self._belongs_by_persona: dict[str, list[LabelRecord]] = defaultdict(list)
        for label in labels:
            self._by_face[label.face_id].append(label)
            if label.verdict == pb.VERDICT_BELONGS:
                self._belongs_by_persona[label.persona_id].append(label)
        for persona_labels in self._belongs_by_persona.values():
            persona_labels.sort(key=lambda label: label.create_time, reverse=True)

    @classmethod
    def load(cls, store: Store) -> "LabelIndex":
        return cls(store.iter_labels())

    def face_ids(self) -> list[str]:
        """Every face that has a label."""
        return list(self._by_face)

    def of_face(self, face_id: str) -> list[LabelRecord]:
        return self._by_face.get(face_id, [])

    def has_belongs(self, face_id: str) -> bool:
        return any(label.verdict == pb.VERDICT_BELONGS for label in self.of_face(face_id))

    def rejects(self, face_id: str, persona_id: str) -> bool:
        return any(label.persona_id == persona_id and label.verdict == pb.VERDICT_NOT_BELONGS
                   for label in self.of_face(face_id))

    def belonging_to(self, persona_id: str) -> list[LabelRecord]:
        """BELONGS labels of the persona, newest first."""
        return self._belongs_by_persona.get(persona_id, [])


def shown_prediction(prediction: PredictionRecord | None, labels: list[LabelRecord],
                     current_version: int) -> PredictionRecord | None:
    """The prediction a face shows: its stored verdict, unless a BELONGS label wins. Once a
    full run of the active version has covered the store (`current_version`, else 0) every
    verdict is that version's (it left the unchanged ones as they were); before, a verdict
    names the version that wrote it, never one that has not evaluated the face yet."""
    if prediction is None or any(label.verdict == pb.VERDICT_BELONGS for label in labels):
        return None
    if current_version and prediction.model_version != current_version:
        return dataclasses.replace(prediction, model_version=current_version)
    return prediction


def face_message(record: FaceRecord, labels: list[LabelRecord], prediction: PredictionRecord | None,
                 current_version: int, include_embedding: bool = False) -> pb.Face:
    return convert.face(record, labels, shown_prediction(prediction, labels, current_version), include_embedding)


class Catalogue:
    def __init__(self, store: Store):
        self.store = store

    def active_version(self) -> int:
        record = self.store.active_model_version()
        return record.version if record else 0

    def current_version(self) -> int:
        """The active version once its full re-classification completed (every stored verdict
        is then its verdict), else 0 (verdicts name the versions that wrote them)."""
        active = self.active_version()
        return active if active and self.store.get_meta(RECLASSIFIED_VERSION_KEY) == str(active) else 0

    # ---- personas --------------------------------------------------------
    def persona(self, persona_id: str) -> pb.Persona:
        return self.persona_messages([self.require_persona(persona_id)])[0]

    def personas(self, offset: int, limit: int, query: str = "",
                 include_hidden: bool = False) -> tuple[list[pb.Persona], bool]:
        """A page of personas by name (those whose name contains `query`, ignoring
        case and accents; hidden ones only when asked), and whether more follow."""
        records = self.store.list_personas()
        if query:
            wanted = search_key(query)
            records = [record for record in records if wanted in search_key(record.display_name)]
        if not include_hidden:
            hidden = self.store.hidden_ids("persona")
            records = [record for record in records if record.persona_id not in hidden]
        page = records[offset:offset + limit]
        if not page:
            return [], False
        return self.persona_messages(page), offset + limit < len(records)

    def persona_messages(self, records: list[PersonaRecord]) -> list[pb.Persona]:
        """Personas with their counts and cover, from a few store reads for the whole list."""
        persona_ids = [record.persona_id for record in records]
        labels = LabelIndex.load(self.store)
        labelled = self.store.count_labels(persona_ids, pb.VERDICT_BELONGS)
        predicted = self.predicted_counts(persona_ids, labels)
        hidden = self.store.hidden_ids("persona")
        messages = []
        for record in records:
            belonging = labels.belonging_to(record.persona_id)
            messages.append(convert.persona(record, labelled=labelled[record.persona_id],
                                            predicted=predicted[record.persona_id],
                                            cover_face_id=belonging[0].face_id if belonging else ""))
            messages[-1].hidden = record.persona_id in hidden
        return messages

    def predicted_counts(self, persona_ids: list[str], labels: LabelIndex) -> dict[str, int]:
        """How many faces predicted_faces lists for each persona: the store's count of the
        verdicts naming it, less the labelled faces among them that a label decides."""
        counts = self.store.count_predictions(persona_ids)
        for prediction in self.store.get_predictions(labels.face_ids()).values():
            persona_id, face_id = prediction.persona_id, prediction.face_id
            decided = labels.has_belongs(face_id) or labels.rejects(face_id, persona_id)
            if persona_id in counts and decided:
                counts[persona_id] -= 1
        return counts

    def predicted_faces(self, persona_id: str, labels: LabelIndex) -> list[PredictionRecord]:
        """The verdicts naming the persona, highest confidence first, less faces a label
        already decides."""
        return [prediction for prediction in self.store.predictions_of_persona(persona_id)
                if not labels.has_belongs(prediction.face_id) and not labels.rejects(prediction.face_id, persona_id)]

    def require_persona(self, persona_id: str) -> PersonaRecord:
        record = self.store.get_persona(persona_id)
        if record is None:
            raise NotFound(f"persona {persona_id!r} not found")
        return record

    # ---- faces -----------------------------------------------------------
    def face(self, face_id: str, include_embedding: bool = False) -> pb.Face:
        record = self.require_face(face_id)
        message = face_message(record, self.store.labels_of_face(face_id), self.store.get_prediction(face_id),
                               self.current_version(), include_embedding)
        message.hidden = face_id in self.store.hidden_ids("face")
        return message

    def faces(self, face_ids: list[str]) -> list[pb.Face]:
        """Many faces in the order given (those that exist), from a few store reads."""
        labels, version, hidden = LabelIndex.load(self.store), self.current_version(), self.store.hidden_ids("face")
        records = self.store.get_faces(face_ids)
        predictions = self.store.get_predictions(record.face_id for record in records)
        messages = [face_message(record, labels.of_face(record.face_id), predictions.get(record.face_id), version)
                    for record in records]
        for message in messages:
            message.hidden = message.face_id in hidden
        return messages

    def require_face(self, face_id: str) -> FaceRecord:
        record = self.store.get_face(face_id)
        if record is None:
            raise NotFound(f"face {face_id!r} not found")
        return record

    def persona_faces(self, persona_id: str, kind: int, offset: int, limit: int) -> tuple[list[pb.Face], bool]:
        """A page of the persona's faces of this kind, and whether more follow."""
        self.require_persona(persona_id)
        labels, version = LabelIndex.load(self.store), self.current_version()
        if kind == query_pb2.FACE_KIND_PREDICTED:
            return self._predicted_page(persona_id, labels, version, offset, limit)
        verdict = pb.VERDICT_BELONGS if kind == query_pb2.FACE_KIND_LABELLED else pb.VERDICT_NOT_BELONGS
        persona_labels = self.store.labels_of_persona(persona_id, verdict)  # newest first
        records = self.store.get_faces(label.face_id for label in persona_labels[offset:offset + limit])
        # Faces labelled BELONGS never show a prediction: skip the read.
        predictions = {} if verdict == pb.VERDICT_BELONGS else self.store.get_predictions(r.face_id for r in records)
        faces = [face_message(record, labels.of_face(record.face_id), predictions.get(record.face_id), version)
                 for record in records]
        return faces, offset + limit < len(persona_labels)

    def _predicted_page(self, persona_id: str, labels: LabelIndex, version: int, offset: int,
                        limit: int) -> tuple[list[pb.Face], bool]:
        predictions = self.predicted_faces(persona_id, labels)
        page = {prediction.face_id: prediction for prediction in predictions[offset:offset + limit]}
        faces = [face_message(record, labels.of_face(record.face_id), page[record.face_id], version)
                 for record in self.store.get_faces(page)]  # dicts keep the confidence order
        return faces, offset + limit < len(predictions)

    def unknown_faces(self, after: UnknownFaceKey | None, limit: int) -> tuple[list[pb.Face], UnknownFaceKey | None]:
        """A page of the unknown faces that are not hidden, newest image first (then position
        in the image), from the store's unknown-faces index, and the key to go on after
        (None at the end). Reads only the page's faces, labels and predictions."""
        hidden = self.store.hidden_ids("face")
        keys: list[UnknownFaceKey] = []
        while True:  # one more than the page: a token only when something follows
            wanted = limit + 1 - len(keys)
            batch = self.store.list_unknown_faces(after, wanted)
            keys += [key for key in batch if key.face_id not in hidden]
            if len(keys) > limit or len(batch) < wanted:
                break
            after = batch[-1]
        page, more = keys[:limit], len(keys) > limit
        faces = self.store.faces_of_images(dict.fromkeys(key.image_id for key in page))
        records = {face.face_id: face for image_faces in faces.values() for face in image_faces}
        labels = self.store.labels_of_faces(key.face_id for key in page)
        predictions = self.store.get_predictions(key.face_id for key in page)
        version = self.current_version()
        messages = [face_message(records[key.face_id], labels[key.face_id], predictions.get(key.face_id), version)
                    for key in page if key.face_id in records]
        return messages, (page[-1] if more else None)

    # ---- images ----------------------------------------------------------
    def images(self, offset: int, limit: int) -> tuple[list[pb.Image], bool]:
        records = self.store.list_images(offset, limit + 1)
        return [convert.image(record) for record in records[:limit]], len(records) > limit

    def image(self, image_id: str) -> query_pb2.GetImageResponse:
        record = self.store.get_image(image_id)
        if record is None:
            raise NotFound(f"image {image_id!r} not found")
        version = self.current_version()
        records = self.store.faces_of_images([image_id])[image_id]  # a Face message carries no crop
        predictions = self.store.get_predictions(face.face_id for face in records)
        faces = [face_message(face, self.store.labels_of_face(face.face_id), predictions.get(face.face_id), version)
                 for face in records]
        hidden = self.store.hidden_ids("face")
        for face in faces:
            face.hidden = face.face_id in hidden
        return query_pb2.GetImageResponse(image=convert.image(record), faces=faces)
