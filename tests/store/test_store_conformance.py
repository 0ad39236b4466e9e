"""Behaviour every store backend must share (see lib/visage/store/base.py)."""
from __future__ import annotations

import numpy as np
import pytest

from store_spec import open_spec
from visage.store.base import PREDICTION_TOLERANCE, NotFound
from visage.store.records import (
    FaceRecord,
    ImageRecord,
    LabelRecord,
    ModelVersionRecord,
    PredictionRecord,
    TrainingJobRecord,
)
from visage.v1 import resources_pb2 as pb

RNG = np.random.default_rng(7)


def make_image(store, name: str, faces: int = 2, content: bytes | None = None, create_time: float = 1000.0):
    content = content if content is not None else f"image bytes of {name}".encode()
    image = ImageRecord(name, f"{name}.jpg", "image/jpeg", 640, 480, len(content), faces,
                        pb.IMAGE_STATUS_FACES_FOUND, create_time)
    records = [FaceRecord(f"{name}-f{i}", name, i, (10 * i, 20, 10 * i + 50, 90),
                          [(1.5 * i, 2.0), (3.0, 4.25)] * 2 + [(5.0, 6.0)],
                          RNG.standard_normal(128).astype(np.float32), f"crop {name} {i}".encode())
               for i in range(faces)]
    return image, content, records


def event_types(store) -> list[int]:
    return [e.type for e in store.read_events("", 10_000)]


# ---- lifecycle ---------------------------------------------------------------
def test_migrate_is_idempotent_and_keeps_data(store):
    persona = store.create_persona("Ada")
    store.migrate()
    store.migrate()
    assert store.get_persona(persona.persona_id).display_name == "Ada"


# ---- personas ------------------------------------------------------------------
def test_personas_create_get_list_rename(store):
    bob = store.create_persona("bob")
    alice = store.create_persona("Alice")
    carl = store.create_persona("Carl")
    assert store.get_persona(bob.persona_id) == bob
    assert store.get_persona("no-such-persona") is None
    assert [p.display_name for p in store.list_personas()] == ["Alice", "bob", "Carl"]
    renamed = store.rename_persona(alice.persona_id, "Zoe")
    assert renamed.display_name == "Zoe" and store.get_persona(alice.persona_id).display_name == "Zoe"
    assert [p.persona_id for p in store.list_personas()] == [bob.persona_id, carl.persona_id, alice.persona_id]
    with pytest.raises(NotFound):
        store.rename_persona("missing", "x")
    events = store.read_events("", 100)
    assert [e.type for e in events] == [pb.EVENT_TYPE_PERSONA_CREATED] * 3 + [pb.EVENT_TYPE_PERSONA_RENAMED]
    assert events[-1].subject == alice.persona_id and events[-1].attributes == {}  # ids only, no names


def test_delete_persona_removes_its_labels_and_predictions_only(store):
    image, content, faces = make_image(store, "img1", faces=3)
    store.put_image(image, content, faces)
    keep, gone = store.create_persona("Keep"), store.create_persona("Gone")
    store.put_label(LabelRecord(faces[0].face_id, gone.persona_id, pb.VERDICT_BELONGS))
    store.put_label(LabelRecord(faces[1].face_id, gone.persona_id, pb.VERDICT_NOT_BELONGS))
    store.put_label(LabelRecord(faces[1].face_id, keep.persona_id, pb.VERDICT_BELONGS))
    store.put_predictions([PredictionRecord(faces[2].face_id, gone.persona_id, 0.9, 1),
                           PredictionRecord(faces[0].face_id, keep.persona_id, 0.8, 1)])
    store.delete_persona(gone.persona_id)
    assert store.get_persona(gone.persona_id) is None
    assert store.labels_of_face(faces[0].face_id) == []
    assert [l.persona_id for l in store.labels_of_face(faces[1].face_id)] == [keep.persona_id]
    assert store.labels_of_persona(gone.persona_id, pb.VERDICT_BELONGS) == []
    assert store.get_prediction(faces[2].face_id) is None
    assert store.get_prediction(faces[0].face_id).persona_id == keep.persona_id
    assert store.predictions_of_persona(gone.persona_id) == []
    assert store.get_face(faces[0].face_id) is not None  # faces are never cascaded
    with pytest.raises(NotFound):
        store.delete_persona(gone.persona_id)
    assert event_types(store)[-2:] == [pb.EVENT_TYPE_PERSONA_DELETED, pb.EVENT_TYPE_ERASED]


# ---- images and faces --------------------------------------------------------------
def test_put_image_is_idempotent_and_round_trips(store):
    image, content, faces = make_image(store, "a" * 64, faces=3)
    assert store.put_image(image, content, faces) is True
    assert store.put_image(image, b"other bytes", faces[:1]) is False
    assert store.get_image(image.image_id) == image
    assert store.get_image_content(image.image_id) == content
    stored = store.faces_of_image(image.image_id)
    assert [f.face_id for f in stored] == [f.face_id for f in faces]
    for got, want in zip(stored, faces):
        assert got.box == want.box and got.landmarks == want.landmarks and got.index == want.index
        assert got.crop_jpeg == want.crop_jpeg and got.create_time == want.create_time
        assert got.embedding.dtype == np.float32 and np.array_equal(got.embedding, want.embedding)
    assert store.count_images() == 1 and store.count_faces() == 3
    assert event_types(store) == [pb.EVENT_TYPE_IMAGE_INGESTED]
    assert store.read_events("", 10)[0].attributes == {"face_count": "3"}


def test_large_image_content_survives_intact(store):
    content = RNG.integers(0, 256, size=2_600_000, dtype=np.uint8).tobytes()  # > 2 chunks of 1 MB
    image, _, faces = make_image(store, "big", faces=1, content=content)
    assert store.put_image(image, content, faces)
    assert store.get_image_content("big") == content


def test_unknown_ids_give_none_or_empty(store):
    assert store.get_image("nope") is None and store.get_image_content("nope") is None
    assert store.get_face("nope") is None and store.faces_of_image("nope") == []
    assert store.get_prediction("nope") is None and store.get_model_version(99) is None
    assert store.get_model_artifact(99) is None and store.get_training_job("nope") is None
    assert store.active_model_version() is None and store.get_meta("nope") is None
    assert store.delete_label("nope", "nope") is False


def test_image_without_faces(store):
    image, content, _ = make_image(store, "empty", faces=0)
    assert store.put_image(image, content, [])
    assert store.faces_of_image("empty") == [] and store.count_faces() == 0 and store.count_images() == 1


def test_get_faces_keeps_given_order_and_skips_unknown(store):
    image, content, faces = make_image(store, "img", faces=4)
    store.put_image(image, content, faces)
    wanted = [faces[3].face_id, "missing", faces[0].face_id, faces[2].face_id]
    assert [f.face_id for f in store.get_faces(wanted)] == [faces[3].face_id, faces[0].face_id, faces[2].face_id]
    assert store.get_faces([]) == []


def test_faces_of_images_in_one_call_without_crops(store):
    stored = {}
    for name, count in (("one", 1), ("three", 3), ("none", 0)):
        image, content, faces = make_image(store, name, faces=count)
        store.put_image(image, content, faces)
        stored[name] = faces
    got = store.faces_of_images(["three", "missing", "one", "none"])
    assert list(got) == ["three", "missing", "one", "none"]  # every id asked, in the order asked
    assert got["missing"] == [] and got["none"] == []
    assert [f.face_id for f in got["three"]] == [f.face_id for f in stored["three"]]  # index order
    for light, full in zip(got["three"] + got["one"], stored["three"] + stored["one"]):
        assert light.crop_jpeg == b"" and full.crop_jpeg != b""
        assert (light.image_id, light.index, light.box, light.landmarks, light.create_time) == \
            (full.image_id, full.index, full.box, full.landmarks, full.create_time)
        assert np.array_equal(light.embedding, full.embedding)
    assert store.faces_of_images([]) == {}


def test_list_images_newest_first_with_paging(store):
    for i in range(7):
        image, content, faces = make_image(store, f"img{i}", faces=1, create_time=1000.0 + i * 50_000)
        store.put_image(image, content, faces)  # spans several days
    names = [i.image_id for i in store.list_images(0, 100)]
    assert names == [f"img{i}" for i in reversed(range(7))]
    assert [i.image_id for i in store.list_images(2, 3)] == ["img4", "img3", "img2"]
    assert store.list_images(7, 5) == [] and store.list_images(0, 0) == []


def test_iter_embeddings_returns_every_face_in_bounded_batches(store):
    expected = {}
    for i in range(5):
        image, content, faces = make_image(store, f"img{i}", faces=7)
        store.put_image(image, content, faces)
        expected.update({f.face_id: f.embedding for f in faces})
    seen = {}
    for ids, matrix in store.iter_embeddings(batch_size=4):
        assert len(ids) <= 4 and matrix.shape == (len(ids), 128) and matrix.dtype == np.float32
        seen.update(zip(ids, matrix))
    assert seen.keys() == expected.keys()
    assert all(np.array_equal(seen[k], expected[k]) for k in expected)


# ---- labels ------------------------------------------------------------------------
def test_label_rules(store):
    image, content, faces = make_image(store, "img", faces=2)
    store.put_image(image, content, faces)
    a, b, c = (store.create_persona(n) for n in "ABC")
    face = faces[0].face_id
    store.put_label(LabelRecord(face, a.persona_id, pb.VERDICT_BELONGS, create_time=1.0))
    store.put_label(LabelRecord(face, c.persona_id, pb.VERDICT_NOT_BELONGS, create_time=2.0))
    # A BELONGS for B replaces A's BELONGS, keeps C's NOT_BELONGS.
    store.put_label(LabelRecord(face, b.persona_id, pb.VERDICT_BELONGS, "ann", create_time=3.0))
    labels = store.labels_of_face(face)
    assert [(l.persona_id, l.verdict) for l in labels] == [(b.persona_id, pb.VERDICT_BELONGS),
                                                          (c.persona_id, pb.VERDICT_NOT_BELONGS)]
    assert labels[0].labelled_by == "ann"
    assert store.labels_of_persona(a.persona_id, pb.VERDICT_BELONGS) == []
    # Upsert: C flips to BELONGS, which removes B's BELONGS.
    store.put_label(LabelRecord(face, c.persona_id, pb.VERDICT_BELONGS, create_time=4.0))
    assert [(l.persona_id, l.verdict) for l in store.labels_of_face(face)] == [(c.persona_id, pb.VERDICT_BELONGS)]
    assert store.labels_of_persona(c.persona_id, pb.VERDICT_NOT_BELONGS) == []
    assert [l.face_id for l in store.labels_of_persona(c.persona_id, pb.VERDICT_BELONGS)] == [face]
    # Same label twice leaves the same data.
    store.put_label(LabelRecord(face, c.persona_id, pb.VERDICT_BELONGS, create_time=4.0))
    assert len(store.labels_of_face(face)) == 1
    with pytest.raises(NotFound):
        store.put_label(LabelRecord("no-face", a.persona_id, pb.VERDICT_BELONGS))
    with pytest.raises(NotFound):
        store.put_label(LabelRecord(face, "no-persona", pb.VERDICT_BELONGS))
    labelled = [e for e in store.read_events("", 100) if e.type == pb.EVENT_TYPE_FACE_LABELLED]
    assert len(labelled) == 5 and labelled[0].attributes == {"persona_id": a.persona_id, "verdict": "VERDICT_BELONGS"}


def test_count_labels_per_persona_and_verdict(store):
    image, content, faces = make_image(store, "img", faces=4)
    store.put_image(image, content, faces)
    a, b, idle = (store.create_persona(n) for n in "AB_")
    for face in faces[:3]:
        store.put_label(LabelRecord(face.face_id, a.persona_id, pb.VERDICT_BELONGS))
    store.put_label(LabelRecord(faces[3].face_id, a.persona_id, pb.VERDICT_NOT_BELONGS))
    store.put_label(LabelRecord(faces[3].face_id, b.persona_id, pb.VERDICT_BELONGS))
    ids = [a.persona_id, b.persona_id, idle.persona_id, "no-such-persona"]
    assert store.count_labels(ids, pb.VERDICT_BELONGS) == dict(zip(ids, [3, 1, 0, 0]))
    assert store.count_labels(ids, pb.VERDICT_NOT_BELONGS) == dict(zip(ids, [1, 0, 0, 0]))
    # A BELONGS label for B moves faces[0] away from A; removing a label uncounts it.
    store.put_label(LabelRecord(faces[0].face_id, b.persona_id, pb.VERDICT_BELONGS))
    store.delete_label(faces[3].face_id, a.persona_id)
    assert store.count_labels(ids, pb.VERDICT_BELONGS) == dict(zip(ids, [2, 2, 0, 0]))
    assert store.count_labels(ids, pb.VERDICT_NOT_BELONGS)[a.persona_id] == 0
    assert store.count_labels([], pb.VERDICT_BELONGS) == {}


def test_labels_of_persona_newest_first_and_delete_label(store):
    image, content, faces = make_image(store, "img", faces=3)
    store.put_image(image, content, faces)
    p = store.create_persona("P")
    for i, face in enumerate(faces):
        store.put_label(LabelRecord(face.face_id, p.persona_id, pb.VERDICT_NOT_BELONGS, create_time=10.0 + i))
    assert [l.face_id for l in store.labels_of_persona(p.persona_id, pb.VERDICT_NOT_BELONGS)] == \
        [faces[2].face_id, faces[1].face_id, faces[0].face_id]
    assert {(l.face_id, l.persona_id) for l in store.iter_labels()} == {(f.face_id, p.persona_id) for f in faces}
    assert store.delete_label(faces[1].face_id, p.persona_id) is True
    assert store.delete_label(faces[1].face_id, p.persona_id) is False
    assert store.labels_of_face(faces[1].face_id) == []
    assert len(store.labels_of_persona(p.persona_id, pb.VERDICT_NOT_BELONGS)) == 2
    unlabelled = [e for e in store.read_events("", 100) if e.type == pb.EVENT_TYPE_FACE_UNLABELLED]
    assert [(e.subject, e.attributes) for e in unlabelled] == [(faces[1].face_id, {"persona_id": p.persona_id})]


# ---- predictions -----------------------------------------------------------------------
# The last verdict stands: a face's stored prediction is its verdict whichever version wrote
# it, and the persona index is version-free.
def test_predictions_upsert_by_face_and_query_by_persona(store):
    a, b = "persona-a", "persona-b"
    store.put_predictions([PredictionRecord("f1", a, 0.5, 1), PredictionRecord("f2", a, 0.9, 1),
                           PredictionRecord("f3", b, 0.7, 1), PredictionRecord("f4", "", 0.2, 1)])
    assert [p.face_id for p in store.predictions_of_persona(a)] == ["f2", "f1"]
    # A newer version re-predicts f1 as b and f2 as a: each face keeps only its latest prediction.
    store.put_predictions([PredictionRecord("f1", b, 0.95, 2), PredictionRecord("f2", a, 0.6, 2)])
    assert store.get_prediction("f1") == PredictionRecord("f1", b, 0.95, 2, store.get_prediction("f1").create_time)
    assert [(p.face_id, p.model_version) for p in store.predictions_of_persona(a)] == [("f2", 2)]
    assert [(p.face_id, p.model_version) for p in store.predictions_of_persona(b)] == [("f1", 2), ("f3", 1)]
    assert store.predictions_of_persona("") == []  # unknown is not a persona: see list_unknown_faces
    assert sorted((p.face_id, p.persona_id, p.model_version) for p in store.iter_predictions()) == \
        [("f1", b, 2), ("f2", a, 2), ("f3", b, 1), ("f4", "", 1)]
    store.put_predictions([])


def test_many_predictions_in_one_call(store):
    predictions = [PredictionRecord(f"face{i:04d}", "p", float(i) / 1000, 3) for i in range(1000)]
    store.put_predictions(predictions)
    got = store.predictions_of_persona("p")
    assert len(got) == 1000 and [p.confidence for p in got] == sorted((p.confidence for p in got), reverse=True)


def test_a_reclassification_replaces_every_prediction_and_its_index(store):
    """The classifier's bulk write: thousands of faces, then a new version that moves them."""
    personas = ["p1", "p2", "p3", ""]
    first = [PredictionRecord(f"face{i:05d}", personas[i % 4], 0.5, 1) for i in range(5000)]
    store.put_predictions(first + [PredictionRecord("face00000", "p2", 0.25, 1)])  # the last one of a face wins
    assert store.get_prediction("face00000").persona_id == "p2"
    store.put_predictions([PredictionRecord(p.face_id, personas[(i + 1) % 4], 0.75, 2) for i, p in enumerate(first)])
    assert store.count_predictions(personas) == {"p1": 1250, "p2": 1250, "p3": 1250, "": 0}
    assert {p.face_id for p in store.predictions_of_persona("p2")} == {f.face_id for f in first[0::4]}
    assert all(p.model_version == 2 and p.confidence == 0.75 for p in store.iter_predictions())
    assert sum(1 for _ in store.iter_predictions()) == 5000


def test_prediction_columns_replace_a_version_like_records(store):
    """put_prediction_columns (the re-classification's write) upserts exactly like put_predictions."""
    store.put_predictions([PredictionRecord("f1", "a", 0.5, 1), PredictionRecord("f2", "a", 0.9, 1),
                           PredictionRecord("f3", "b", 0.7, 1), PredictionRecord("kept", "b", 0.4, 1)])
    confidences = np.array([0.25, 0.75, 0.5, 0.125, 0.625], dtype=np.float32)  # as the model answers them
    assert store.put_prediction_columns(["f1", "f2", "f3", "new", "f1"], ["b", "", "b", "a", "a"], confidences, 2,
                                        1234.5) == 4
    assert store.get_prediction("f1") == PredictionRecord("f1", "a", 0.625, 2, 1234.5)  # its last one wins
    assert store.get_prediction("f2") == PredictionRecord("f2", "", 0.75, 2, 1234.5)
    assert [(p.face_id, p.confidence) for p in store.predictions_of_persona("a")] == [("f1", 0.625), ("new", 0.125)]
    assert [(p.face_id, p.model_version) for p in store.predictions_of_persona("b")] == [("f3", 2), ("kept", 1)]
    assert store.count_predictions(["a", "b", ""]) == {"a": 2, "b": 2, "": 0}
    assert sum(1 for _ in store.iter_predictions()) == 5
    assert store.put_prediction_columns([], [], np.zeros(0, np.float32), 3, 1.0) == 0
    store.put_prediction_columns(("f3",), ("a",), [0.5], 3, 2.0)  # any sequences
    assert store.get_prediction("f3") == PredictionRecord("f3", "a", 0.5, 3, 2.0)


def test_changed_only_columns_write_only_changed_verdicts(store):
    """The re-classification's write: a verdict that names the same persona with a confidence
    within PREDICTION_TOLERANCE stands as stored (its version too); others are rewritten."""
    store.put_predictions([PredictionRecord("same", "a", 0.5, 1), PredictionRecord("nudged", "a", 0.5, 1),
                           PredictionRecord("moved", "a", 0.5, 1), PredictionRecord("shifted", "a", 0.5, 1),
                           PredictionRecord("gone", "a", 0.5, 1)])
    step = PREDICTION_TOLERANCE / 2
    written = store.put_prediction_columns(
        ["same", "nudged", "moved", "shifted", "gone", "new"], ["a", "a", "b", "a", "", "b"],
        np.array([0.5, 0.5 + step, 0.5, 0.5 + 4 * step, 0.5, 0.3]), 2, 9.0, changed_only=True)
    assert written == 4
    versions = {p.face_id: (p.persona_id, p.model_version) for p in store.iter_predictions()}
    assert versions == {"same": ("a", 1), "nudged": ("a", 1), "moved": ("b", 2), "shifted": ("a", 2),
                        "gone": ("", 2), "new": ("b", 2)}
    assert store.get_prediction("nudged").confidence == 0.5  # within the tolerance: the stored verdict stands
    assert [p.face_id for p in store.predictions_of_persona("b")] == ["moved", "new"]
    # The same answers again write nothing at all.
    assert store.put_prediction_columns(
        ["same", "nudged", "moved", "shifted", "gone", "new"], ["a", "a", "b", "a", "", "b"],
        np.array([0.5, 0.5 + step, 0.5, 0.5 + 4 * step, 0.5, 0.3]), 3, 10.0, changed_only=True) == 0
    assert {p.model_version for p in store.iter_predictions()} == {1, 2}


def test_prediction_columns_of_different_lengths_write_nothing(store):
    store.put_predictions([PredictionRecord("f1", "a", 0.5, 1)])
    with pytest.raises(ValueError, match="2 face ids, 1 persona ids, 2 confidences"):
        store.put_prediction_columns(["f1", "f2"], ["b"], [0.1, 0.2], 2, 1.0)
    assert [(p.face_id, p.persona_id, p.model_version) for p in store.iter_predictions()] == [("f1", "a", 1)]


def test_a_reclassification_by_columns_replaces_thousands(store):
    face_ids = [f"face{i:05d}" for i in range(6000)]
    personas = ["p1", "p2", ""]
    store.put_prediction_columns(face_ids, [personas[i % 3] for i in range(6000)], np.full(6000, 0.5), 1, 1.0)
    confidences = np.linspace(0, 1, 6000, dtype=np.float32)
    store.put_prediction_columns(face_ids, [personas[(i + 1) % 3] for i in range(6000)], confidences, 2, 2.0)
    assert store.count_predictions(personas) == {"p1": 2000, "p2": 2000, "": 0}
    p1 = store.predictions_of_persona("p1")
    assert {p.face_id for p in p1} == set(face_ids[2::3])
    assert [p.confidence for p in p1] == sorted((float(c) for c in confidences[2::3]), reverse=True)
    assert all(p.model_version == 2 and p.create_time == 2.0 for p in store.iter_predictions())


def test_get_predictions_in_one_call(store):
    store.put_predictions([PredictionRecord(f"face{i}", "p", i / 10, 1) for i in range(5)] +
                          [PredictionRecord("stranger", "", 0.1, 2)])
    got = store.get_predictions(["face3", "missing", "stranger", "face0", "face3"])
    assert set(got) == {"face3", "stranger", "face0"}
    assert got["face3"] == store.get_prediction("face3")
    assert (got["face3"].persona_id, got["face3"].confidence, got["face3"].model_version) == ("p", 0.3, 1)
    assert (got["stranger"].persona_id, got["stranger"].model_version) == ("", 2)
    many = store.get_predictions(f"face{i}" for i in range(2000))  # more ids than one request takes
    assert set(many) == {f"face{i}" for i in range(5)}
    assert store.get_predictions([]) == {}


def test_count_predictions_per_persona(store):
    store.put_predictions([PredictionRecord("f1", "a", 0.9, 1), PredictionRecord("f2", "a", 0.8, 1),
                           PredictionRecord("f3", "b", 0.7, 1), PredictionRecord("f4", "", 0.1, 1),
                           PredictionRecord("f5", "a", 0.6, 2)])
    assert store.count_predictions(["a", "b", "", "c"]) == {"a": 3, "b": 1, "": 0, "c": 0}
    store.put_predictions([PredictionRecord("f1", "b", 0.9, 1)])  # f1 moves from a to b
    assert store.count_predictions(["a", "b"]) == {"a": 2, "b": 2}
    store.delete_persona(store.create_persona("temp").persona_id)  # deleting another persona changes nothing
    assert store.count_predictions(["a", "b"]) == {"a": 2, "b": 2}
    assert store.count_predictions([]) == {}


# ---- model versions ---------------------------------------------------------------------
def version_record(**kw) -> ModelVersionRecord:
    base = dict(version=0, state=pb.MODEL_STATE_CANDIDATE, algorithm="svm", unknown_threshold=0.4,
                persona_ids=["a", "b"], metrics={"accuracy": 0.9}, lineage={"labels": 3})
    return ModelVersionRecord(**(base | kw))


def test_model_versions_numbering_artifacts_and_activation(store):
    artifact = RNG.integers(0, 256, size=2_300_000, dtype=np.uint8).tobytes()
    v1 = store.put_model_version(version_record(), artifact)
    v2 = store.put_model_version(version_record(algorithm="logreg"), b"onnx-2")
    assert (v1.version, v2.version) == (1, 2)
    assert store.get_model_artifact(1) == artifact and store.get_model_artifact(2) == b"onnx-2"
    assert store.get_model_version(1).persona_ids == ["a", "b"]
    assert [v.version for v in store.list_model_versions()] == [2, 1]
    v2.state, v2.gate_reason, v2.metrics = pb.MODEL_STATE_REJECTED, "worse", {"accuracy": 0.1}
    store.update_model_version(v2)
    got = store.get_model_version(2)
    assert (got.state, got.gate_reason, got.metrics) == (pb.MODEL_STATE_REJECTED, "worse", {"accuracy": 0.1})
    store.update_model_version(version_record(version=42))  # unknown: no row appears
    assert store.get_model_version(42) is None

    active = store.activate_model_version(1)
    assert active.state == pb.MODEL_STATE_ACTIVE and active.activate_time > 0
    assert store.active_model_version().version == 1
    assert active.gate_reason == ""  # no reason given: the stored one stays
    store.activate_model_version(2, gate_reason="better than version 1")  # recorded with the activation
    assert store.active_model_version().version == 2
    assert store.active_model_version().gate_reason == "better than version 1"
    assert store.get_model_version(1).state == pb.MODEL_STATE_RETIRED
    assert [v.state for v in store.list_model_versions()].count(pb.MODEL_STATE_ACTIVE) == 1
    with pytest.raises(NotFound):
        store.activate_model_version(77)
    activated = [e.subject for e in store.read_events("", 100) if e.type == pb.EVENT_TYPE_MODEL_VERSION_ACTIVATED]
    assert activated == ["1", "2"]
    assert store.put_model_version(version_record(version=10), b"x").version == 10
    assert store.put_model_version(version_record(), b"y").version == 11


def test_deleting_a_model_artifact_keeps_the_version_row(store):
    artifact = RNG.integers(0, 256, size=2_300_000, dtype=np.uint8).tobytes()  # several chunks on Cassandra
    store.put_model_version(version_record(), artifact)
    store.put_model_version(version_record(), b"onnx-2")
    assert store.delete_model_artifact(1) is True
    assert store.get_model_artifact(1) is None and store.get_model_version(1).persona_ids == ["a", "b"]
    assert store.delete_model_artifact(1) is False and store.delete_model_artifact(99) is False
    assert store.get_model_artifact(2) == b"onnx-2"
    assert store.put_model_version(version_record(), b"onnx-3").version == 3  # numbering goes on


# ---- training jobs ------------------------------------------------------------------------
def test_training_jobs_upsert_and_list_newest_first(store):
    for i in range(4):
        store.put_training_job(TrainingJobRecord(f"job{i}", pb.TRAINING_TRIGGER_MANUAL, pb.TRAINING_PHASE_QUEUED, create_time=100.0 + i * 90_000))
    job = store.get_training_job("job1")
    job.phase, job.done, job.total, job.metrics = 3, 5, 10, {"f1": 0.5}
    store.put_training_job(job)
    assert store.get_training_job("job1") == job
    assert [j.job_id for j in store.list_training_jobs(3)] == ["job3", "job2", "job1"]
    assert len(store.list_training_jobs(10)) == 4


# ---- event log --------------------------------------------------------------------------
def test_events_order_cursors_and_limits(store):
    assert store.latest_cursor() == "" and store.read_events("", 10) == []
    appended = [store.append_event(pb.EVENT_TYPE_TRAINING_PROGRESS, "job", {"done": str(i)}) for i in range(25)]
    events = store.read_events("", 1000)
    assert [e.attributes["done"] for e in events] == [str(i) for i in range(25)]
    assert [e.cursor for e in events] == [e.cursor for e in appended]
    assert [e.cursor for e in events] == sorted(e.cursor for e in events)  # cursors order as strings
    assert all(e.create_time > 0 for e in events)
    # Paging by cursor reads each event once.
    paged, cursor = [], ""
    while batch := store.read_events(cursor, 7):
        assert len(batch) <= 7
        paged.extend(batch)
        cursor = batch[-1].cursor
    assert [e.cursor for e in paged] == [e.cursor for e in appended]
    assert store.read_events(appended[10].cursor, 3) == events[11:14]
    # latest_cursor: only later events follow it.
    latest = store.latest_cursor()
    assert latest == appended[-1].cursor and store.read_events(latest, 10) == []
    later = store.append_event(pb.EVENT_TYPE_RECLASSIFY_PROGRESS, "v1", {})
    assert [e.cursor for e in store.read_events(latest, 10)] == [later.cursor]
    assert store.read_events(latest, 10)[0].attributes == {}


@pytest.mark.parametrize("cursor", ["9" * 40, "-1", "x", "1e5", "\u0661"])
def test_a_cursor_no_store_made_is_a_value_error(store, cursor):
    """The query service answers INVALID_ARGUMENT for ValueError; found by the REST fuzzer
    (a 40-digit afterCursor overflowed SQLite and answered 500)."""
    store.append_event(pb.EVENT_TYPE_TRAINING_PROGRESS, "job", {})
    with pytest.raises(ValueError):
        store.read_events(cursor, 10)


def test_meta_round_trip(store):
    assert store.get_meta("k") is None
    store.set_meta("k", "v1")
    store.set_meta("k", "v2")
    assert store.get_meta("k") == "v2"


def test_data_is_visible_to_a_second_store_instance(store, store_spec):
    image, content, faces = make_image(store, "img", faces=1)
    store.put_image(image, content, faces)
    other = open_spec(store_spec)
    try:
        assert other.get_image("img") == image and other.count_faces() == 1
        assert [e.type for e in other.read_events("", 10)] == [pb.EVENT_TYPE_IMAGE_INGESTED]
    finally:
        other.close()
