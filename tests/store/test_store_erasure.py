"""Erasure, unlearning and event retention, on every backend (see lib/visage/store/base.py):
after each erasure no read of the store shows anything of the erased data."""
from __future__ import annotations

import time

import pytest

from test_store_conformance import make_image
from visage.store.base import NotFound, Withdrawn
from visage.store.records import LabelRecord, ModelVersionRecord, PredictionRecord
from visage.v1 import resources_pb2 as pb


def all_events(store) -> list:
    return store.read_events("", 100_000)


def mentions(event, ids: set[str]) -> bool:
    return event.subject in ids or any(value in ids for value in event.attributes.values())


def put_version(store, persona_ids: list[str], cursor: str = "") -> ModelVersionRecord:
    record = ModelVersionRecord(0, pb.MODEL_STATE_CANDIDATE, "centroid", 0.5, persona_ids, {},
                                {"event_cursor": cursor})
    return store.put_model_version(record, b"onnx bytes naming " + ",".join(persona_ids).encode())


def assert_faces_gone(store, face_ids: list[str]) -> None:
    """Every read path of faces, labels and predictions shows nothing of these faces."""
    ids = set(face_ids)
    assert store.get_faces(face_ids) == []
    assert all(store.get_face(face_id) is None for face_id in face_ids)
    assert all(store.labels_of_face(face_id) == [] for face_id in face_ids)
    assert store.get_predictions(face_ids) == {}
    assert not ids & {face_id for batch, _ in store.iter_embeddings() for face_id in batch}
    assert not ids & {label.face_id for label in store.iter_labels()}
    assert not ids & {prediction.face_id for prediction in store.iter_predictions()}


def assert_only_erasure_names(store, ids: set[str]) -> None:
    """Replayed from the start, the log names these ids only in the erasure's own events."""
    tombstones = {pb.EVENT_TYPE_ERASED, pb.EVENT_TYPE_PERSONA_DELETED}
    assert [e for e in all_events(store) if mentions(e, ids) and e.type not in tombstones] == []


@pytest.fixture
def scene(store):
    """Two images; Penny labelled on one face of each; a rejection and predictions."""
    first, first_content, first_faces = make_image(store, "first", faces=2)
    second, second_content, second_faces = make_image(store, "second", faces=2, create_time=2000.0)
    store.put_image(first, first_content, first_faces)
    store.put_image(second, second_content, second_faces)
    penny, leonard = store.create_persona("Penny"), store.create_persona("Leonard")
    store.put_label(LabelRecord(first_faces[0].face_id, penny.persona_id, pb.VERDICT_BELONGS))
    store.put_label(LabelRecord(first_faces[1].face_id, leonard.persona_id, pb.VERDICT_NOT_BELONGS))
    store.put_label(LabelRecord(second_faces[0].face_id, penny.persona_id, pb.VERDICT_BELONGS))
    store.put_predictions([PredictionRecord(first_faces[1].face_id, penny.persona_id, 0.7, 1),
                           PredictionRecord(second_faces[1].face_id, leonard.persona_id, 0.6, 1)])
    return {"first": first, "first_faces": first_faces, "second": second, "second_faces": second_faces,
            "penny": penny, "leonard": leonard}


# ---- DeleteImage -------------------------------------------------------------
def test_delete_image_erases_it_from_every_read(store, scene):
    first, faces = scene["first"], scene["first_faces"]
    face_ids = [f.face_id for f in faces]
    erasure = store.delete_image(first.image_id)

    assert erasure.image_ids == [first.image_id] and sorted(erasure.face_ids) == sorted(face_ids)
    assert sorted(erasure.persona_ids) == sorted([scene["penny"].persona_id, scene["leonard"].persona_id])
    assert store.get_image(first.image_id) is None and store.get_image_content(first.image_id) is None
    assert [i.image_id for i in store.list_images(0, 10)] == [scene["second"].image_id]
    assert store.count_images() == 1 and store.count_faces() == 2
    assert store.faces_of_image(first.image_id) == [] and store.faces_of_images([first.image_id]) == {
        first.image_id: []}
    assert_faces_gone(store, face_ids)
    assert [l.face_id for l in store.labels_of_persona(scene["penny"].persona_id, pb.VERDICT_BELONGS)] == [
        scene["second_faces"][0].face_id]
    assert store.labels_of_persona(scene["leonard"].persona_id, pb.VERDICT_NOT_BELONGS) == []
    assert store.count_labels([scene["penny"].persona_id], pb.VERDICT_BELONGS) == {scene["penny"].persona_id: 1}
    assert store.predictions_of_persona(scene["penny"].persona_id) == []
    assert store.count_predictions([scene["penny"].persona_id]) == {scene["penny"].persona_id: 0}
    # the other image is untouched
    assert store.get_image_content(scene["second"].image_id) == b"image bytes of second"
    assert len(store.faces_of_image(scene["second"].image_id)) == 2

    erased = [e for e in all_events(store) if e.type == pb.EVENT_TYPE_ERASED]
    assert len(erased) == 1 and erased[0].subject == first.image_id
    assert sorted(erased[0].attributes["face_ids"].split(",")) == sorted(face_ids)
    assert_only_erasure_names(store, {first.image_id, *face_ids})


def test_delete_image_twice_is_not_found_and_changes_nothing(store, scene):
    store.delete_image(scene["first"].image_id)
    events_before = len(all_events(store))
    with pytest.raises(NotFound):
        store.delete_image(scene["first"].image_id)
    with pytest.raises(NotFound):
        store.delete_image("never-stored")
    assert len(all_events(store)) == events_before
    assert store.count_images() == 1


def test_an_erased_image_can_be_ingested_again(store, scene):
    first = scene["first"]
    store.delete_image(first.image_id)
    image, content, faces = make_image(store, "first", faces=2)
    assert store.put_image(image, content, faces) is True
    assert len(store.faces_of_image(first.image_id)) == 2


# ---- DeleteFace --------------------------------------------------------------
def test_delete_face_erases_one_face_and_keeps_its_image(store, scene):
    faces = scene["first_faces"]
    gone, kept = faces[0].face_id, faces[1].face_id
    erasure = store.delete_face(gone)

    assert erasure.face_ids == [gone] and erasure.image_ids == []
    assert erasure.persona_ids == [scene["penny"].persona_id]
    assert_faces_gone(store, [gone])
    assert [f.face_id for f in store.faces_of_image(scene["first"].image_id)] == [kept]
    assert store.get_image(scene["first"].image_id).face_count == 1
    assert store.get_face(kept).crop_jpeg == faces[1].crop_jpeg
    assert [l.persona_id for l in store.labels_of_face(kept)] == [scene["leonard"].persona_id]
    assert_only_erasure_names(store, {gone})
    with pytest.raises(NotFound):
        store.delete_face(gone)
    assert store.get_image(scene["first"].image_id).face_count == 1


# ---- DeletePersona -----------------------------------------------------------
def test_delete_persona_keeping_faces_leaves_them_unknown(store, scene):
    penny = scene["penny"]
    erasure = store.delete_persona(penny.persona_id)

    assert erasure.persona_ids == [penny.persona_id] and erasure.image_ids == [] and erasure.face_ids == []
    assert store.get_persona(penny.persona_id) is None
    assert store.get_face(scene["first_faces"][0].face_id) is not None  # kept, now unlabelled
    assert store.labels_of_face(scene["first_faces"][0].face_id) == []
    assert store.get_prediction(scene["first_faces"][1].face_id) is None
    assert [e.type for e in all_events(store) if mentions(e, {penny.persona_id})] == [
        pb.EVENT_TYPE_PERSONA_DELETED, pb.EVENT_TYPE_ERASED]
    with pytest.raises(NotFound):
        store.delete_persona(penny.persona_id)


def test_delete_persona_erasing_faces_erases_their_images(store, scene):
    penny = scene["penny"]
    erased_faces = [f.face_id for f in scene["first_faces"] + scene["second_faces"]]
    erasure = store.delete_persona(penny.persona_id, erase_faces=True)

    assert sorted(erasure.image_ids) == sorted([scene["first"].image_id, scene["second"].image_id])
    assert sorted(erasure.face_ids) == sorted(erased_faces)
    assert store.get_persona(penny.persona_id) is None
    assert store.count_images() == 0 and store.count_faces() == 0 and store.list_images(0, 10) == []
    assert store.get_image_content(scene["first"].image_id) is None
    assert_faces_gone(store, erased_faces)
    assert store.get_persona(scene["leonard"].persona_id) is not None
    assert_only_erasure_names(store, {penny.persona_id, scene["first"].image_id, scene["second"].image_id,
                                      *erased_faces})


def test_events_carry_ids_never_names(store, scene):
    store.rename_persona(scene["leonard"].persona_id, "Sheldon")
    for event in all_events(store):
        text = " ".join([event.subject, *event.attributes.keys(), *event.attributes.values()])
        for secret in ("Penny", "Leonard", "Sheldon", "first.jpg", "second.jpg"):
            assert secret not in text


# ---- unlearning ----------------------------------------------------------------
def test_erasure_withdraws_every_version_naming_an_erased_label_persona(store, scene):
    penny, leonard = scene["penny"].persona_id, scene["leonard"].persona_id
    both = put_version(store, [penny, leonard])
    penny_only = put_version(store, [penny])
    unrelated_persona = store.create_persona("Raj").persona_id
    unrelated = put_version(store, [unrelated_persona])
    store.activate_model_version(both.version)

    erasure = store.delete_face(scene["second_faces"][0].face_id)  # a Penny label

    assert sorted(erasure.withdrawn_versions) == sorted([both.version, penny_only.version])
    for version in (both.version, penny_only.version):
        assert store.get_model_version(version).state == pb.MODEL_STATE_WITHDRAWN
        assert store.get_model_artifact(version) is None
        with pytest.raises(Withdrawn):
            store.activate_model_version(version)
    assert store.active_model_version() is None  # the active one was withdrawn: nothing serves it
    assert store.get_model_artifact(unrelated.version) is not None
    assert store.activate_model_version(unrelated.version).state == pb.MODEL_STATE_ACTIVE


def test_a_version_trained_before_a_racing_erasure_cannot_be_activated(store, scene):
    penny = scene["penny"].persona_id
    cursor_when_training_read_labels = store.latest_cursor()
    store.delete_face(scene["second_faces"][0].face_id)  # erased while that training ran
    late = put_version(store, [penny], cursor=cursor_when_training_read_labels)
    with pytest.raises(Withdrawn):
        store.activate_model_version(late.version)
    assert store.get_model_version(late.version).state == pb.MODEL_STATE_WITHDRAWN
    assert store.get_model_artifact(late.version) is None
    fresh = put_version(store, [penny], cursor=store.latest_cursor())
    assert store.activate_model_version(fresh.version).state == pb.MODEL_STATE_ACTIVE


def test_deleting_a_persona_withdraws_the_versions_naming_it(store, scene):
    penny = scene["penny"].persona_id
    version = put_version(store, [penny])
    erasure = store.delete_persona(penny)
    assert erasure.withdrawn_versions == [version.version]
    with pytest.raises(Withdrawn):
        store.activate_model_version(version.version)


# ---- retention -----------------------------------------------------------------
def test_compact_events_removes_events_older_than_the_limit(store):
    store.create_persona("early")
    assert store.compact_events(time.time() - 3600) == 0  # nothing is an hour old
    assert len(all_events(store)) == 1
    assert store.compact_events(time.time() + 120) == 1  # a limit past every event's minute
    assert all_events(store) == []
    later = store.create_persona("later")
    assert [e.subject for e in all_events(store)] == [later.persona_id]
