"""The unknown-faces index on every backend: which faces it holds after every kind of
write (base.is_unknown), and pages read through it by cursor are exact while other
writes land between them."""
from __future__ import annotations

import numpy as np

from test_store_conformance import make_image
from visage.store.base import PREDICTION_TOLERANCE, is_unknown
from visage.store.records import LabelRecord, PredictionRecord, UnknownFaceKey
from visage.v1 import resources_pb2 as pb


def ingest(store, name: str, faces: int, create_time: float) -> list[str]:
    store.put_image(*make_image(store, name, faces, create_time=create_time))
    return [f"{name}-f{i}" for i in range(faces)]


def unknown(store, page_size: int = 1000) -> list[str]:
    """Every face the index lists, page after page."""
    listed, after = [], None
    while page := store.list_unknown_faces(after, page_size):
        listed += [key.face_id for key in page]
        after = page[-1]
    return listed


def test_new_faces_are_unknown_newest_image_first_then_by_position(store):
    old = ingest(store, "old", 2, create_time=100.0)
    new = ingest(store, "new", 3, create_time=200.0)
    same_time = ingest(store, "same", 1, create_time=200.0)  # ties: by image id
    assert unknown(store) == [*new, *same_time, *old]
    first = store.list_unknown_faces(None, 1)[0]
    assert first == UnknownFaceKey(200.0, "new", 0, new[0])
    assert unknown(store, page_size=2) == unknown(store)


def test_membership_follows_predictions_and_labels(store):
    faces = ingest(store, "img", 5, create_time=10.0)
    penny, amy = store.create_persona("Penny").persona_id, store.create_persona("Amy").persona_id
    store.put_predictions([PredictionRecord(faces[0], penny, 0.9, 1), PredictionRecord(faces[1], "", 0.4, 1),
                           PredictionRecord(faces[2], penny, 0.8, 1)])
    assert unknown(store) == [faces[1], faces[3], faces[4]]  # a verdict of nobody is unknown
    store.put_label(LabelRecord(faces[2], penny, pb.VERDICT_NOT_BELONGS))  # rejects its verdict: unknown again
    store.put_label(LabelRecord(faces[3], amy, pb.VERDICT_BELONGS))        # labelled: known
    store.put_label(LabelRecord(faces[4], amy, pb.VERDICT_NOT_BELONGS))    # rejects nobody it is predicted as
    assert unknown(store) == [faces[1], faces[2], faces[4]]
    store.delete_label(faces[2], penny)
    store.delete_label(faces[3], amy)
    assert unknown(store) == [faces[1], faces[3], faces[4]]
    store.put_labels([LabelRecord(faces[1], amy, pb.VERDICT_BELONGS), LabelRecord(faces[4], penny, pb.VERDICT_BELONGS)])
    assert unknown(store) == [faces[3]]
    # The last verdict stands: a later version's verdict replaces it, whichever way.
    store.put_prediction_columns([faces[0], faces[3]], ["", penny], np.array([0.3, 0.7]), 2, 5.0, changed_only=True)
    assert unknown(store) == [faces[0]]


def test_deleting_and_merging_personas_and_erasure_update_the_index(store):
    faces = ingest(store, "img", 4, create_time=10.0)
    other = ingest(store, "other", 1, create_time=20.0)
    penny, amy = store.create_persona("Penny").persona_id, store.create_persona("Amy").persona_id
    store.put_predictions([PredictionRecord(faces[0], penny, 0.9, 1), PredictionRecord(faces[1], amy, 0.9, 1)])
    store.put_labels([LabelRecord(faces[2], penny, pb.VERDICT_BELONGS), LabelRecord(faces[3], amy, pb.VERDICT_BELONGS)])
    assert unknown(store) == other
    # A merge (labels moved, then the source deleted): Amy's verdict and label go with her.
    store.put_labels([LabelRecord(faces[3], penny, pb.VERDICT_BELONGS)])
    store.delete_persona(amy)
    assert unknown(store) == [*other, faces[1]]
    # Erasing a labelled face: its row goes; other faces' verdicts stand until a retrained
    # version's re-classification changes them.
    store.delete_face(faces[2])
    assert unknown(store) == [*other, faces[1]]
    store.delete_image(other[0].split("-")[0])
    assert unknown(store) == [faces[1]]
    store.delete_persona(penny)  # faces[0] loses its verdict, faces[3] its label
    assert unknown(store) == [faces[0], faces[1], faces[3]]


def test_hidden_faces_stay_in_the_index(store):
    faces = ingest(store, "img", 2, create_time=10.0)
    store.set_hidden("face", faces[0], True)
    assert unknown(store) == faces  # users hide few: readers filter them (ListUnknownFaces does)


def test_pages_are_exact_while_writes_land_between_them(store):
    """A cursor page goes on right after its last face: faces made known or unknown, images
    ingested or erased meanwhile neither shift nor repeat what follows."""
    penny = store.create_persona("Penny").persona_id
    images = {t: ingest(store, f"i{t:03d}", 2, create_time=float(t)) for t in range(10, 0, -1)}
    order = [face for t in range(10, 0, -1) for face in images[t]]
    first = store.list_unknown_faces(None, 5)
    assert [key.face_id for key in first] == order[:5]
    # Between pages: faces before the cursor change (known and unknown), one after it becomes
    # known, a newer image arrives (before the cursor), an older one too (after it), one is erased.
    store.put_predictions([PredictionRecord(order[0], penny, 0.9, 1), PredictionRecord(order[7], penny, 0.9, 1)])
    store.put_label(LabelRecord(order[1], penny, pb.VERDICT_BELONGS))
    ingest(store, "newer", 2, create_time=50.0)
    older = ingest(store, "older", 1, create_time=0.5)
    store.delete_image("i006")  # order[8:10], after the cursor
    second = store.list_unknown_faces(first[-1], 5)
    assert [key.face_id for key in second] == [order[5], order[6], *order[10:13]]
    store.put_prediction_columns([order[12], order[6]], ["", penny], np.array([0.2, 0.9]), 2, 3.0,
                                 changed_only=True)
    rest = store.list_unknown_faces(second[-1], 100)
    assert [key.face_id for key in rest] == [*order[13:], *older]
    assert store.list_unknown_faces(rest[-1], 100) == []


def test_a_batch_scattered_among_stored_verdicts_writes_and_indexes_exactly_its_changes(store):
    """An incremental re-classification's batch: hundreds of faces scattered among thousands with
    verdicts (SQLite reads a big batch's stored verdicts and labels as one range of face ids, and
    by id what a range holding too many other faces leaves), some labelled twice."""
    faces = ingest(store, "img", 1800, create_time=10.0)
    penny, amy = (store.create_persona(name).persona_id for name in ("Penny", "Amy"))
    store.put_prediction_columns(faces, [penny if i % 2 else "" for i in range(len(faces))],
                                 np.full(len(faces), 0.5), 1, 1.0)
    store.put_labels([LabelRecord(faces[i], persona, pb.VERDICT_NOT_BELONGS)
                      for i in range(0, len(faces), 7) for persona in (penny, amy)])
    store.put_labels([LabelRecord(faces[i], amy, pb.VERDICT_BELONGS) for i in range(5, len(faces), 11)])
    due = faces[::3]  # 600 faces spread over the 1800
    answers = [(amy, 0.5) if k % 3 == 0 else ("", 0.5) if k % 3 == 1 else (penny, 0.5 + PREDICTION_TOLERANCE / 2)
               for k in range(len(due))]
    before = store.get_predictions(faces)
    changed = {face_id: persona for face_id, (persona, confidence) in zip(due, answers)
               if before[face_id].persona_id != persona
               or abs(before[face_id].confidence - confidence) > PREDICTION_TOLERANCE}
    assert store.put_prediction_columns(due, [a[0] for a in answers], np.array([a[1] for a in answers]), 2, 2.0,
                                        changed_only=True) == len(changed)
    after = store.get_predictions(faces)
    assert {f: p.persona_id for f, p in after.items()} == {f: changed.get(f, before[f].persona_id) for f in faces}
    assert {f for f, p in after.items() if p.model_version == 2} == set(changed)
    labels = store.labels_of_faces(faces)
    assert sorted(unknown(store)) == sorted(f for f in faces if is_unknown(labels[f], after[f]))
