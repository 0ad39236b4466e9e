"""Incremental re-classification, on both stores: a replica that remembers the shards it
passed over predicts again, after an activation, only the faces whose verdict can change;
whatever it skips, every unlabelled face's stored verdict is afterwards the active version's
answer, as a full run would leave it. What it must not skip: faces another replica's pass
wrote, faces ingested since, faces unlabelled since, faces of a deleted persona; an erasure
makes it start over."""
from __future__ import annotations

import numpy as np
import pytest

from tests.classifier.conftest import activate_model, personas_for, put_faces
from tests.classifier.test_reclassify import noisy_copies
from tests.classifier.test_shared_reclassify import replica_config, replicas  # noqa: F401 - fixtures used below
from visage import metrics
from visage.store import open_store
from visage.store.base import PREDICTION_TOLERANCE
from visage.store.records import LabelRecord
from visage.v1 import resources_pb2 as pb
from visage_classifier.models import ActiveModel
from visage_classifier.reclassify import SUCCEEDED, Reclassifier, belonging_face_ids, follow, known_or_unknown

SHARDS = 4
FACES = 1500


@pytest.fixture
def world(replica_config, crop_embeddings):  # noqa: F811 - the imported fixture
    """Personas, FACES lookalike faces (the first 10 labelled) and the training set of version 1
    (not active yet). Yields (store, persona ids by name, face ids, training)."""
    store = open_store(replica_config)
    ids = personas_for(store, crop_embeddings)
    rows, names = noisy_copies(crop_embeddings, FACES, seed=5)
    face_ids = put_faces(store, rows, faces_per_image=300)
    for face_id, name in zip(face_ids[:10], names[:10]):
        store.put_label(LabelRecord(face_id, ids[name], pb.VERDICT_BELONGS))
    training = {ids[name]: list(embeddings) for name, embeddings in crop_embeddings.items()}
    yield store, ids, face_ids, training
    store.close()


@pytest.fixture
def classified(world, replicas):
    """The world after version 1's run on one replica: (store, ids, face_ids, training, that replica)."""
    store, ids, face_ids, training = world
    reclassifier = replicas()
    activate_model(store, training)
    assert after_activation(reclassifier) == FACES  # nothing remembered yet: every face
    return store, ids, face_ids, training, reclassifier


def after_activation(reclassifier: Reclassifier) -> int:
    """Runs the activated version's shared job on this replica; returns the faces it predicted."""
    before = metrics.FACES_PREDICTED._value.get()
    final = list(follow(reclassifier.start_or_join(shared=True), lambda: True))[-1]
    assert final.state == SUCCEEDED, final
    return int(metrics.FACES_PREDICTED._value.get() - before)


def one_more_label(training: dict, ids: dict, crop_embeddings, name: str = "amy", lookalike: str = "bernadette"):
    """The training set after one more BELONGS label: a lookalike of another persona."""
    return {**training, ids[name]: [*training[ids[name]], crop_embeddings[lookalike][0]]}


def assert_every_verdict_is_the_active_versions(store) -> None:
    """What a full run would leave: every unlabelled face's stored verdict is the active
    version's answer (persona exact, confidence within the changed-only tolerance)."""
    predictor = ActiveModel(store).refresh()
    labelled = belonging_face_ids(store)
    known = {persona.persona_id for persona in store.list_personas()}
    face_ids, embeddings = [], []
    for batch_ids, matrix in store.iter_embeddings(1000):
        face_ids += batch_ids
        embeddings.append(matrix)
    persona_ids, confidences = predictor.predict(np.concatenate(embeddings))
    stored = store.get_predictions(face_ids)
    wrong = [(face_id, stored.get(face_id), persona_id, confidence) for face_id, persona_id, confidence
             in zip(face_ids, known_or_unknown(persona_ids, known), confidences.tolist())
             if face_id not in labelled and (face_id not in stored or stored[face_id].persona_id != persona_id
                                             or abs(stored[face_id].confidence - confidence) > PREDICTION_TOLERANCE)]
    assert not wrong, f"{len(wrong)} faces hold another verdict, e.g. {wrong[:3]}"


def test_after_a_one_label_change_only_faces_it_can_change_are_predicted(classified, crop_embeddings):
    store, ids, face_ids, training, reclassifier = classified
    assert_every_verdict_is_the_active_versions(store)
    activate_model(store, one_more_label(training, ids, crop_embeddings))
    predicted = after_activation(reclassifier)
    assert 0 < predicted < FACES // 2  # Amy's lookalikes and the faces near her, not the rest
    assert_every_verdict_is_the_active_versions(store)


def test_shards_another_replica_wrote_are_predicted_in_full(classified, replicas, crop_embeddings):
    store, ids, face_ids, training, first = classified  # it remembers every shard
    training = one_more_label(training, ids, crop_embeddings)
    activate_model(store, training)
    after_activation(replicas())  # another replica alone: it writes every shard after the first did
    activate_model(store, one_more_label(training, ids, crop_embeddings, "penny", "bernadette"))
    assert after_activation(first) == FACES  # what it remembers is not what the store holds
    assert_every_verdict_is_the_active_versions(store)


def test_faces_ingested_since_get_the_new_versions_verdict(classified, crop_embeddings):
    store, ids, face_ids, training, reclassifier = classified
    rows, _names = noisy_copies(crop_embeddings, 200, seed=6)
    put_faces(store, rows, faces_per_image=50)  # no classifier follows the log here: only the run predicts them
    activate_model(store, one_more_label(training, ids, crop_embeddings))
    assert after_activation(reclassifier) >= 200
    assert_every_verdict_is_the_active_versions(store)


def test_a_face_unlabelled_since_gets_a_verdict(classified, crop_embeddings):
    store, ids, face_ids, training, reclassifier = classified
    labelled = store.labels_of_face(face_ids[0])[0]
    assert store.get_prediction(face_ids[0]) is None  # a labelled face has its label only
    store.delete_label(labelled.face_id, labelled.persona_id)
    activate_model(store, one_more_label(training, ids, crop_embeddings))
    after_activation(reclassifier)
    assert store.get_prediction(face_ids[0]) is not None
    assert_every_verdict_is_the_active_versions(store)


def test_faces_of_a_deleted_persona_get_the_next_versions_verdict(classified):
    store, ids, face_ids, training, reclassifier = classified
    howards = [p.face_id for p in store.get_predictions(face_ids).values() if p.persona_id == ids["howard"]]
    assert howards
    store.delete_persona(ids["howard"])  # its verdicts go with it (and the version naming it)
    assert not store.get_predictions(howards)
    activate_model(store, {persona_id: rows for persona_id, rows in training.items() if persona_id != ids["howard"]})
    after_activation(reclassifier)
    assert set(store.get_predictions(howards)) == set(howards)
    assert_every_verdict_is_the_active_versions(store)


def test_an_erasure_makes_a_replica_start_over(classified, crop_embeddings):
    store, ids, face_ids, training, reclassifier = classified
    store.delete_image(store.get_face(face_ids[-1]).image_id)  # its last 300 faces
    activate_model(store, one_more_label(training, ids, crop_embeddings))
    assert after_activation(reclassifier) == FACES - 300
    assert not store.get_predictions(face_ids[-300:])
    assert_every_verdict_is_the_active_versions(store)


def test_a_moved_threshold_turns_only_faces_at_the_edge(classified):
    """Every persona's threshold moves (the shared one is calibrated from all labels), no
    centre does: the faces between the old and new threshold are answered again."""
    store, ids, face_ids, training, reclassifier = classified
    activate_model(store, training, distance_threshold=0.35)
    predicted = after_activation(reclassifier)
    assert 0 < predicted < FACES
    assert_every_verdict_is_the_active_versions(store)
