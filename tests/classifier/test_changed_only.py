"""Changed-only re-classification: a run writes a face's prediction only when its verdict
changes (another persona, or a confidence moved by more than PREDICTION_TOLERANCE); the
last verdict stands otherwise. Observed through the store: which rows carry which version."""
from __future__ import annotations

import numpy as np

from tests.classifier.conftest import activate_model, personas_for, put_faces
from tests.classifier.test_reclassify import noisy_copies
from visage import metrics
from visage.store.base import PREDICTION_TOLERANCE
from visage_classifier.models import ActiveModel, predict
from visage_classifier.reclassify import SUCCEEDED, Reclassifier, follow


def run_to_the_end(store) -> int:
    """An operator's full re-classification; returns the predictions it wrote."""
    before = metrics.PREDICTIONS_WRITTEN._value.get()
    reclassifier = Reclassifier(store, ActiveModel(store), batch_rows=500)
    try:
        assert list(follow(reclassifier.start_or_join(), lambda: True))[-1].state == SUCCEEDED
    finally:
        reclassifier.stop()
    return int(metrics.PREDICTIONS_WRITTEN._value.get() - before)


def test_a_run_writes_only_verdicts_that_change(sqlite_store, crop_embeddings):
    store = sqlite_store
    ids = personas_for(store, crop_embeddings)
    rows, _names = noisy_copies(crop_embeddings, 3000, seed=3)
    face_ids = put_faces(store, rows, faces_per_image=1000)
    training = {ids[n]: list(embeddings) for n, embeddings in crop_embeddings.items()}
    first = activate_model(store, training)
    assert run_to_the_end(store) == len(face_ids)  # nothing stored yet: every verdict is new
    stored = {p.face_id: p for p in store.iter_predictions()}

    # The same model again: not one row written, every prediction as it was.
    assert run_to_the_end(store) == 0
    assert {p.face_id: p for p in store.iter_predictions()} == stored

    # One more label (an Amy lookalike of Bernadette's) moves Amy's centroid: only the faces
    # whose verdict that changes are written.
    training[ids["amy"]] = [*training[ids["amy"]], crop_embeddings["bernadette"][0]]
    second = activate_model(store, training)
    written = run_to_the_end(store)
    answers = predict(ActiveModel(store).refresh(), rows)
    changed = {face_id for face_id, persona_id, confidence in zip(face_ids, answers.persona_ids,
                                                                    answers.confidences.tolist())
               if stored[face_id].persona_id != persona_id
               or abs(stored[face_id].confidence - confidence) > PREDICTION_TOLERANCE}
    now = {p.face_id: p for p in store.iter_predictions()}
    assert 0 < written == len(changed) < len(face_ids) // 2
    assert {face_id for face_id, p in now.items() if p.model_version == second} == changed
    assert all(now[face_id] == stored[face_id] and now[face_id].model_version == first
               for face_id in set(face_ids) - changed)
    # Every stored verdict is the new model's (within the tolerance for the ones left standing).
    for face_id, persona_id, confidence in zip(face_ids, answers.persona_ids, answers.confidences.tolist()):
        assert now[face_id].persona_id == persona_id
        assert abs(now[face_id].confidence - confidence) <= PREDICTION_TOLERANCE


def shared_run(store) -> int:
    """The replicas' shared re-classification after an activation; returns the predictions written."""
    before = metrics.PREDICTIONS_WRITTEN._value.get()
    reclassifier = Reclassifier(store, ActiveModel(store), batch_rows=500)
    try:
        assert not reclassifier.is_up_to_date()
        assert list(follow(reclassifier.start_or_join(shared=True), lambda: True))[-1].state == SUCCEEDED
        assert reclassifier.is_up_to_date()
    finally:
        reclassifier.stop()
    return int(metrics.PREDICTIONS_WRITTEN._value.get() - before)


def test_a_version_activated_again_is_re_classified_again(sqlite_store, crop_embeddings):
    """A rollback re-activates a version whose shared job finished long ago: its run must
    evaluate every face again (the verdicts stored meanwhile are another version's)."""
    store = sqlite_store
    ids = personas_for(store, crop_embeddings)
    rows, _names = noisy_copies(crop_embeddings, 1000, seed=4)
    face_ids = put_faces(store, rows)
    everyone = {ids[n]: list(embeddings) for n, embeddings in crop_embeddings.items()}
    first = activate_model(store, everyone)
    assert shared_run(store) == len(rows)
    activate_model(store, {ids["penny"]: crop_embeddings["penny"]})  # only Penny: most faces turn unknown
    assert shared_run(store) > 0
    store.activate_model_version(first)  # roll back
    assert shared_run(store) > 0
    answers = predict(ActiveModel(store).refresh(), rows)
    stored = {p.face_id: p for p in store.iter_predictions()}
    assert [stored[face_id].persona_id for face_id in face_ids] == answers.persona_ids
