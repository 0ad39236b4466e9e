"""Re-classification: writes, labels win, events, join, cancellation, superseding."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from tests.classifier.conftest import activate_model, personas_for, put_faces
from visage.store.records import LabelRecord, ModelVersionRecord
from visage.v1 import classify_pb2
from visage.v1 import resources_pb2 as pb
from visage_classifier.models import ActiveModel
from visage_classifier.reclassify import Reclassifier, follow

SUCCEEDED = classify_pb2.RECLASSIFY_STATE_SUCCEEDED


def noisy_copies(crop_embeddings, count: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """`count` embeddings near the crops (plus their true names): a store of lookalikes."""
    rng = np.random.default_rng(seed)
    names = sorted(crop_embeddings)
    picks = rng.integers(0, len(names), count)
    rows = np.stack([crop_embeddings[names[p]][rng.integers(0, 5)] for p in picks])
    return (rows + rng.normal(0, 0.01, rows.shape)).astype(np.float32), [names[p] for p in picks]


@pytest.fixture
def labelled_store(sqlite_store, crop_embeddings):
    """Personas, 2,000 lookalike faces, the first 10 labelled as belonging."""
    ids = personas_for(sqlite_store, crop_embeddings)
    rows, names = noisy_copies(crop_embeddings, 2000)
    face_ids = put_faces(sqlite_store, rows, faces_per_image=500)
    for face_id, name in zip(face_ids[:10], names[:10]):
        sqlite_store.put_label(LabelRecord(face_id, ids[name], pb.VERDICT_BELONGS))
    return ids, face_ids, names


def events_of(store, event_type):
    return [event for event in store.read_events("", 100000) if event.type == event_type]


def test_reclassify_without_model_says_so(stub):
    progress = list(stub.Reclassify(classify_pb2.ReclassifyRequest()))
    assert [p.state for p in progress] == [classify_pb2.RECLASSIFY_STATE_NO_MODEL]
    assert "no model" in progress[0].message


def test_reclassify_rpc_predicts_every_unlabelled_face(stub, classifier, sqlite_store, labelled_store,
                                                       crop_embeddings):
    ids, face_ids, names = labelled_store
    version = activate_model(sqlite_store, {ids[n]: rows for n, rows in crop_embeddings.items()})
    progress = list(stub.Reclassify(classify_pb2.ReclassifyRequest()))
    final = progress[-1]
    assert final.state == SUCCEEDED and final.model_version == version
    assert final.done == final.total == 1990
    assert all(p.done <= p.total for p in progress)
    for face_id, name in zip(face_ids, names):
        prediction = sqlite_store.get_prediction(face_id)
        if face_id in face_ids[:10]:
            assert prediction is None, "a labelled face got a prediction"
        else:
            assert (prediction.persona_id, prediction.model_version) == (ids[name], version)
    written = events_of(sqlite_store, pb.EVENT_TYPE_PREDICTIONS_WRITTEN)
    assert written[-1].attributes == {"model_version": str(version), "count": "1990"}
    reported = events_of(sqlite_store, pb.EVENT_TYPE_RECLASSIFY_PROGRESS)
    assert reported[-1].attributes["state"] == "RECLASSIFY_STATE_SUCCEEDED"
    assert set(reported[-1].attributes) == {"model_version", "done", "total", "faces_per_second", "eta_seconds",
                                            "state"}


def test_activation_event_starts_reclassification_and_replaces_older_predictions(
        classifier, sqlite_store, labelled_store, crop_embeddings):
    ids, face_ids, names = labelled_store
    first = activate_model(sqlite_store, {ids[n]: rows for n, rows in crop_embeddings.items()})
    wait_for_event(sqlite_store, pb.EVENT_TYPE_PREDICTIONS_WRITTEN, str(first))
    # The next version knows only Penny: every other face must turn unknown, none keep v1's answer.
    second = activate_model(sqlite_store, {ids["penny"]: crop_embeddings["penny"]})
    wait_for_event(sqlite_store, pb.EVENT_TYPE_PREDICTIONS_WRITTEN, str(second))
    predictions = {p.face_id: p for p in sqlite_store.iter_predictions()}
    for face_id, name in zip(face_ids[10:], names[10:]):
        assert predictions[face_id].persona_id == (ids["penny"] if name == "penny" else "")
        # Only changed verdicts are rewritten: Penny's faces keep v1's (the same centroid, the same answer).
        assert predictions[face_id].model_version == (first if name == "penny" else second)


def wait_predicted(store, face_id, version, timeout=30.0):
    deadline = time.monotonic() + timeout
    while (prediction := store.get_prediction(face_id)) is None or prediction.model_version != version:
        assert time.monotonic() < deadline, f"{face_id} never got a prediction of version {version}"
        time.sleep(0.05)


def wait_for_event(store, event_type, subject, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not [e for e in events_of(store, event_type) if e.subject == subject]:
        assert time.monotonic() < deadline, f"no event {event_type} for {subject}"
        time.sleep(0.05)


def test_newly_ingested_faces_get_a_prediction_of_the_active_version(classifier, sqlite_store, crop_embeddings):
    ids = personas_for(sqlite_store, crop_embeddings)
    version = activate_model(sqlite_store, {ids[n]: rows for n, rows in crop_embeddings.items()})
    wait_for_event(sqlite_store, pb.EVENT_TYPE_PREDICTIONS_WRITTEN, str(version))
    [face_id] = put_faces(sqlite_store, np.stack([crop_embeddings["amy"][2]]))
    wait_predicted(sqlite_store, face_id, version)
    assert sqlite_store.get_prediction(face_id).persona_id == ids["amy"]


@pytest.fixture
def slow_reclassifier():
    """Makes reclassifiers whose small batches make a run last long enough to
    join, cancel and supersede; stops them before the store is closed."""
    made: list[Reclassifier] = []

    def make(store, batch_rows=50) -> Reclassifier:
        made.append(Reclassifier(store, ActiveModel(store), batch_rows=batch_rows))
        return made[-1]

    yield make
    for reclassifier in made:
        reclassifier.stop()


def test_second_request_joins_the_running_run(sqlite_store, labelled_store, crop_embeddings, slow_reclassifier):
    ids, face_ids, _ = labelled_store
    activate_model(sqlite_store, {ids[n]: rows for n, rows in crop_embeddings.items()})
    reclassifier = slow_reclassifier(sqlite_store, batch_rows=20)
    first = reclassifier.start_or_join()
    second = reclassifier.start_or_join()
    assert second is first
    seen = [list(follow(run, lambda: True)) for run in (first, second)]
    assert seen[0][-1].state == seen[1][-1].state == SUCCEEDED
    assert len(events_of(sqlite_store, pb.EVENT_TYPE_PREDICTIONS_WRITTEN)) == 1
    assert reclassifier.start_or_join() is not first  # a finished run is not joined: a new one starts


def test_concurrent_rpc_callers_share_one_run(stub, classifier, sqlite_store, crop_embeddings):
    ids = personas_for(sqlite_store, crop_embeddings)
    rows, _ = noisy_copies(crop_embeddings, 60000)
    put_faces(sqlite_store, rows, faces_per_image=20000)
    version = activate_model(sqlite_store, {ids[n]: rows for n, rows in crop_embeddings.items()})
    wait_for_event(sqlite_store, pb.EVENT_TYPE_PREDICTIONS_WRITTEN, str(version))
    before = len(events_of(sqlite_store, pb.EVENT_TYPE_PREDICTIONS_WRITTEN))
    classifier.classifier.reclassifier._batch_rows = 500  # a run of ~120 batches: long enough to join
    results = []
    callers = [threading.Thread(target=lambda: results.append(list(stub.Reclassify(
        classify_pb2.ReclassifyRequest())))) for _ in range(3)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(60)
    assert [r[-1].state for r in results] == [SUCCEEDED] * 3
    assert len(events_of(sqlite_store, pb.EVENT_TYPE_PREDICTIONS_WRITTEN)) - before == 1


def test_cancelling_a_watcher_leaves_the_shared_run_going(stub, classifier, sqlite_store, crop_embeddings):
    ids = personas_for(sqlite_store, crop_embeddings)
    rows, _ = noisy_copies(crop_embeddings, 60000)
    face_ids = put_faces(sqlite_store, rows, faces_per_image=20000)
    classifier.classifier.reclassifier._batch_rows = 500  # a run of ~120 batches
    version = activate_model(sqlite_store, {ids[n]: rows for n, rows in crop_embeddings.items()})
    watcher = stub.Reclassify(classify_pb2.ReclassifyRequest())
    other = stub.Reclassify(classify_pb2.ReclassifyRequest())
    assert next(watcher).model_version == version
    watcher.cancel()
    final = list(other)[-1]
    assert final.state == SUCCEEDED and final.done == len(face_ids)
    assert sqlite_store.get_prediction(face_ids[-1]).model_version == version


def test_newer_version_supersedes_a_running_run(sqlite_store, labelled_store, crop_embeddings,
                                                 slow_reclassifier):
    ids, face_ids, _ = labelled_store
    reclassifier = slow_reclassifier(sqlite_store, batch_rows=2)
    activate_model(sqlite_store, {ids[n]: rows for n, rows in crop_embeddings.items()})
    old = reclassifier.start_or_join()
    newest = activate_model(sqlite_store, {ids["penny"]: crop_embeddings["penny"]})
    new = reclassifier.start_or_join()
    assert new is not old and old.successor is new
    progress = list(follow(old, lambda: True))  # a watcher of the old run ends on the new one
    assert progress[-1].state == SUCCEEDED and progress[-1].model_version == newest
    penny_only = {ids["penny"], ""}  # every stored verdict is the newest version's (unchanged ones stand)
    predictions = list(sqlite_store.iter_predictions())
    assert len(predictions) == len(face_ids) - 10 and {p.persona_id for p in predictions} <= penny_only


def test_unloadable_version_fails_the_run_and_keeps_serving_the_old_one(stub, classifier, sqlite_store,
                                                                         crop_embeddings):
    ids = personas_for(sqlite_store, crop_embeddings)
    good = activate_model(sqlite_store, {ids[n]: rows for n, rows in crop_embeddings.items()})
    wait_for_event(sqlite_store, pb.EVENT_TYPE_PREDICTIONS_WRITTEN, str(good))
    broken = sqlite_store.put_model_version(ModelVersionRecord(0, pb.MODEL_STATE_CANDIDATE, "test", 0.5,
                                                               [ids["amy"]], {}, {}), b"not an onnx model").version
    sqlite_store.activate_model_version(broken)
    progress = list(stub.Reclassify(classify_pb2.ReclassifyRequest()))
    assert progress[-1].state == classify_pb2.RECLASSIFY_STATE_FAILED
    assert f"model version {broken} could not be loaded" in progress[-1].message
    answer = stub.ClassifyEmbeddings(classify_pb2.ClassifyEmbeddingsRequest(
        embeddings=[classify_pb2.Embedding(values=crop_embeddings["amy"][0].tolist())]))
    assert answer.model_version == good and answer.predictions[0].persona_id == ids["amy"]
