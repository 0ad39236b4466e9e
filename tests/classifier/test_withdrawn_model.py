"""Unlearning in the classifier: when an erasure withdraws the version it serves,
Classify stops answering with it (no version serves until a retrained one is
activated), without a restart."""
from __future__ import annotations

import time

from tests.classifier.conftest import activate_model, personas_for
from visage.v1 import classify_pb2

WAIT_SECONDS = 60


def test_a_withdrawn_version_stops_serving_at_once(stub, classifier, sqlite_store, crop_embeddings):
    ids = personas_for(sqlite_store, crop_embeddings)
    version = activate_model(sqlite_store, {ids[name]: crop_embeddings[name] for name in ("raj", "amy")})
    probe = classify_pb2.ClassifyEmbeddingsRequest(embeddings=[classify_pb2.Embedding(
        values=crop_embeddings["raj"][0].tolist())])
    deadline = time.monotonic() + WAIT_SECONDS
    while stub.ClassifyEmbeddings(probe, timeout=10).model_version != version:  # the activation is picked up
        assert time.monotonic() < deadline, "the classifier never served the activated version"
        time.sleep(0.1)
    assert stub.ClassifyEmbeddings(probe, timeout=10).predictions[0].persona_id == ids["raj"]

    sqlite_store.delete_persona(ids["raj"])  # withdraws the version: it names Raj

    while (answer := stub.ClassifyEmbeddings(probe, timeout=10)).model_version == version:
        assert time.monotonic() < deadline, "the withdrawn version kept serving"
        time.sleep(0.1)
    assert answer.model_version == 0 and answer.predictions[0].persona_id == ""
