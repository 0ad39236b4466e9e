"""A store outage is UNAVAILABLE in the classifier (unary calls and each stream item), on
both stores, through the one mapping in visage.errors; the service stays up."""
from __future__ import annotations

import grpc
import pytest

from visage.v1 import classify_pb2, classify_pb2_grpc
from tests.classifier.conftest import activate_model, personas_for
from visage_classifier.server import start


@pytest.fixture(params=["sqlite", pytest.param("cassandra", marks=pytest.mark.cassandra)])
def store(request):
    return request.getfixturevalue(f"{request.param}_store")


def test_a_store_outage_is_unavailable(config, store, pool, crop_embeddings, cut_off_store):
    ids = personas_for(store, crop_embeddings)
    version = activate_model(store, {ids[name]: rows for name, rows in crop_embeddings.items()})
    running = start(config, store, "127.0.0.1:0", pool=pool, watch_events=False)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = classify_pb2_grpc.ClassifyServiceStub(channel)
            penny = classify_pb2.Embedding(values=crop_embeddings["penny"][0].tolist())
            request = classify_pb2.ClassifyEmbeddingsRequest(embeddings=[penny])
            running.classifier.models.refresh()  # serving the version (events are not watched here)
            answer = stub.ClassifyEmbeddings(request)
            assert (answer.model_version, answer.predictions[0].persona_id) == (version, ids["penny"])
            cut_off_store(store)  # naming the persona needs the store
            with pytest.raises(grpc.RpcError) as raised:
                stub.ClassifyEmbeddings(request, timeout=60)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE, raised.value
            assert "store is unavailable" in raised.value.details()
            answers = list(stub.ClassifyStream(iter([classify_pb2.ClassifyStreamRequest(request_id="a", embedding=penny)]),
                                               timeout=60))
            assert [(a.request_id, a.error_code) for a in answers] == [("a", "UNAVAILABLE")]
    finally:
        running.stop(grace=0)
