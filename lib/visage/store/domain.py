"""The store's rules, written once over the storage roles every backend implements
(visage.store.base: Catalogue, LabelStore, PredictionStore, ModelRegistry, EventLog).

- Erasure cascade: an image takes its faces; a face takes its labels, verdicts, crop and
  placement; a persona takes its labels and the verdicts naming it, and (erase_faces) the
  images of the faces labelled as it; every version trained on an erased label is withdrawn;
  earlier events naming what went are forgotten; one ERASED event names only ids.
- Commit points: dependents go first and the row that makes them visible (image, face,
  persona) last, so a crash midway leaves that row and a retry finishes the erasure.
- Erasure ledger: every erasure adds what it erased (ids only) to the ledger in meta
  (ERASURE_LEDGER_KEY), before its commit row goes; a restore applies it (visage.store.archive),
  so an archive made before an erasure does not bring the erased data back.
- Labels: a label needs a stored face and persona (NotFound); a BELONGS label replaces the
  face's other BELONGS label (how each backend keeps that exclusive is its own storage
  business, see LabelStore.write_label); every change appends its event after itself.
- Drawn faces (add_face): a face drawn on a stored image never duplicates a stored face (more
  than half of either box covered: AlreadyExists naming it) and gets an index no face of the
  image ever had (not an erased one's either: the ledger names those ids, and a restore
  erases what they name), claimed by compare-and-set so concurrent draws get distinct ones.
  (Cassandra: two draws of one face at the same moment may both pass the overlap check, there being
  no multi-row transaction; the second is then a duplicate face a user can erase.)

Each rule runs inside `store.atomic()`: one transaction on SQLite (all or nothing), the
commit-point order alone on Cassandra (no multi-row transactions there).
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence

from visage.faces.detectors import overlap
from visage.store.base import ERASURE_LEDGER_KEY, AlreadyExists, NotFound, Store, withdraw_candidates
from visage.store.records import Erasure, FaceRecord, LabelRecord, face_id_of, now
from visage.v1 import resources_pb2 as pb


# ---- labels ------------------------------------------------------------------
def put_labels(store: Store, labels: Sequence[LabelRecord]) -> None:
    with store.atomic():
        missing_faces = {label.face_id for label in labels} - store.existing_faces(label.face_id for label in labels)
        for label in labels:
            if label.face_id in missing_faces:
                raise NotFound(f"face {label.face_id!r} not found")
            if store.get_persona(label.persona_id) is None:
                raise NotFound(f"persona {label.persona_id!r} not found")
            store.write_label(label)
            store.append_event(pb.EVENT_TYPE_FACE_LABELLED, label.face_id,
                               {"persona_id": label.persona_id, "verdict": pb.Verdict.Name(label.verdict)})


def delete_label(store: Store, face_id: str, persona_id: str) -> bool:
    with store.atomic():
        if not store.remove_label(face_id, persona_id):
            return False
        store.append_event(pb.EVENT_TYPE_FACE_UNLABELLED, face_id, {"persona_id": persona_id})
        return True


# ---- drawn faces ---------------------------------------------------------------
OVERLAP_LIMIT = 0.5  # a drawn box covering more of a stored face than this (or covered so) is that face
NEXT_INDEX_KEY = "faces.next_index."  # + image id: meta key of the next index a drawn face gets


def add_face(store: Store, face: FaceRecord, persona_id: str = "") -> FaceRecord:
    """Stores `face` (its face_id and index are assigned here) on its stored image; labels it
    as belonging to `persona_id` when given (by face.drawn_by, at face.create_time)."""
    with store.atomic():
        if store.get_image(face.image_id) is None:
            raise NotFound(f"image {face.image_id!r} not found")
        if persona_id and store.get_persona(persona_id) is None:
            raise NotFound(f"persona {persona_id!r} not found")
        stored = store.faces_of_images([face.image_id])[face.image_id]
        check_not_stored(stored, face.box)
        index = _claim_index(store, face.image_id, stored)
        face = dataclasses.replace(face, face_id=face_id_of(face.image_id, index), index=index)
        store.put_face(face)
        store.recount_faces(face.image_id, [])
        store.append_event(pb.EVENT_TYPE_FACE_ADDED, face.face_id, {"image_id": face.image_id})
        if persona_id:
            put_labels(store, [LabelRecord(face.face_id, persona_id, pb.VERDICT_BELONGS, face.drawn_by,
                                           face.create_time)])
        return face


def check_not_stored(stored: Iterable[FaceRecord], box: tuple[int, int, int, int]) -> None:
    """AlreadyExists when `box` is one of these faces: more than half of either box is covered."""
    for face in stored:
        if overlap(face.box, box) > OVERLAP_LIMIT:
            left, top, right, bottom = face.box
            raise AlreadyExists(f"face {face.face_id} is already stored there (box {left},{top},{right},{bottom}); "
                                "label it instead")


def _claim_index(store: Store, image_id: str, stored: Sequence[FaceRecord]) -> int:
    """An index beyond every stored and erased face of the image, and beyond every index claimed
    before (one compare-and-set on the image's counter: concurrent draws get distinct ones)."""
    erased = [int(face_id.rsplit("-", 1)[1]) for entry in read_ledger(store) for face_id in entry["face_ids"]
              if face_id.rsplit("-", 1)[0] == image_id and face_id.rsplit("-", 1)[1].isdigit()]
    floor = max([face.index for face in stored] + erased, default=-1) + 1
    previous = store.swap_meta(NEXT_INDEX_KEY + image_id, lambda current: str(max(int(current or 0), floor) + 1))
    return max(int(previous or 0), floor)


# ---- erasure -----------------------------------------------------------------
def erase_image(store: Store, image_id: str) -> Erasure:
    with store.atomic():
        image = store.get_image(image_id)
        if image is None:
            raise NotFound(f"image {image_id!r} not found")
        erasure = _erase_images_but_rows(store, [image_id])
        store.forget_events({*erasure.image_ids, *erasure.face_ids}, since=image.create_time)
        record_erasure(store, erasure)
        store.append_event(pb.EVENT_TYPE_ERASED, image_id, erasure.event_attributes())
        store.drop_image_rows([image_id])
        return erasure


def erase_face(store: Store, face_id: str) -> Erasure:
    with store.atomic():
        face = store.get_face(face_id)
        if face is None:
            raise NotFound(f"face {face_id!r} not found")
        erasure = _erase_faces_but_rows(store, [face_id])
        store.forget_events({face_id}, since=face.create_time)
        store.recount_faces(face.image_id, [face_id])
        record_erasure(store, erasure)
        store.append_event(pb.EVENT_TYPE_ERASED, face_id, erasure.event_attributes())
        store.drop_face_rows([face_id])
        return erasure


def erase_persona(store: Store, persona_id: str, erase_faces: bool = False) -> Erasure:
    with store.atomic():
        persona = store.get_persona(persona_id)
        if persona is None:
            raise NotFound(f"persona {persona_id!r} not found")
        erasure = Erasure(persona_ids=[persona_id])
        if erase_faces:
            labelled = [label.face_id for label in store.labels_of_persona(persona_id, pb.VERDICT_BELONGS)]
            image_ids = list(dict.fromkeys(face.image_id for face in store.get_faces(labelled)))
            erasure = erasure.merge(_erase_images_but_rows(store, image_ids))
        # Before the image rows go (a retry would no longer find these images through their labels).
        store.forget_events({*erasure.image_ids, *erasure.face_ids, persona_id}, {persona_id},
                            since=0.0 if erasure.image_ids else persona.create_time)
        store.drop_image_rows(erasure.image_ids)
        erasure = erasure.merge(Erasure(withdrawn_versions=withdraw_naming(store, [persona_id])))
        store.drop_labels_of_persona(persona_id)
        store.drop_verdicts_naming([persona_id])
        store.drop_hidden("persona", [persona_id])
        record_erasure(store, erasure, deleted_persona=persona_id)
        store.append_event(pb.EVENT_TYPE_PERSONA_DELETED, persona_id)
        store.append_event(pb.EVENT_TYPE_ERASED, persona_id, erasure.event_attributes())
        store.drop_persona_row(persona_id)
        return erasure


def withdraw_naming(store: Store, persona_ids: Sequence[str]) -> list[int]:
    """Withdraws every version trained on labels of these personas (see withdraw_candidates)."""
    if not persona_ids:
        return []
    return store.withdraw_model_versions(withdraw_candidates(store.list_model_versions(), persona_ids))


def _erase_images_but_rows(store: Store, image_ids: list[str]) -> Erasure:
    """Everything of these images but their rows (the commit points)."""
    face_ids = store.face_ids_of_images(image_ids)
    erasure = _erase_faces_but_rows(store, face_ids)
    store.drop_face_rows(face_ids)
    store.drop_image_content(image_ids)
    erasure.image_ids = list(image_ids)
    return erasure


def _erase_faces_but_rows(store: Store, face_ids: list[str]) -> Erasure:
    """Labels, verdicts, crops and placements of these faces (not their rows), after
    withdrawing the versions their labels may have trained."""
    persona_ids = sorted(store.personas_labelling(face_ids))
    withdrawn = withdraw_naming(store, persona_ids)
    store.drop_predictions_of_faces(face_ids)
    store.drop_labels_of_faces(face_ids)
    store.drop_face_details(face_ids)
    store.drop_hidden("face", face_ids)
    return Erasure(face_ids=list(face_ids), persona_ids=persona_ids, withdrawn_versions=withdrawn)


# ---- the erasure ledger ------------------------------------------------------------
def ledger_entry(erasure: Erasure, deleted_persona: str = "", time: float | None = None) -> dict:
    """One erasure as the ledger keeps it: ids only, and when (a restore withdraws the versions
    made before it that name a persona whose labels it erased)."""
    entry = {"time": now() if time is None else time, "image_ids": list(erasure.image_ids),
             "face_ids": list(erasure.face_ids), "persona_ids": list(erasure.persona_ids)}
    if deleted_persona:
        entry["deleted_persona"] = deleted_persona
    return entry


def read_ledger(store: Store) -> list[dict]:
    return json.loads(store.get_meta(ERASURE_LEDGER_KEY) or "[]")


def add_to_ledger(store: Store, entries: Sequence[dict]) -> None:
    """Adds these entries (those not in it yet: adding is idempotent). One compare-and-set."""
    def add(current: str) -> str:
        ledger = json.loads(current or "[]")
        known = {json.dumps(entry, sort_keys=True) for entry in ledger}
        ledger += [entry for entry in entries if json.dumps(entry, sort_keys=True) not in known]
        return json.dumps(ledger, separators=(",", ":"))
    store.swap_meta(ERASURE_LEDGER_KEY, add)


def record_erasure(store: Store, erasure: Erasure, deleted_persona: str = "") -> None:
    add_to_ledger(store, [ledger_entry(erasure, deleted_persona)])
