"""A store outage is UNAVAILABLE (retry elsewhere/later) in the trainer, on both stores,
and the trainer stays up: the one mapping in visage.errors, not UNKNOWN."""
from __future__ import annotations

import grpc
import pytest

from visage.v1 import train_pb2, train_pb2_grpc
from visage_trainer.server import start
from visage_trainer.training import TrainerSettings


@pytest.fixture(params=["sqlite", pytest.param("cassandra", marks=pytest.mark.cassandra)])
def store(request):
    return request.getfixturevalue(f"{request.param}_store")


def test_a_store_outage_is_unavailable(config, store, cut_off_store):
    service = start(config, store, "127.0.0.1:0", TrainerSettings(debounce_seconds=0.3, poll_seconds=0.05))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = train_pb2_grpc.TrainServiceStub(channel)
            stub.ListModelVersions(train_pb2.ListModelVersionsRequest())  # serving
            cut_off_store(store)
            for call, request in [(stub.ListModelVersions, train_pb2.ListModelVersionsRequest()),
                                  (stub.GetActiveModelVersion, train_pb2.GetActiveModelVersionRequest()),
                                  (stub.ActivateModelVersion, train_pb2.ActivateModelVersionRequest(version=1))]:
                with pytest.raises(grpc.RpcError) as raised:
                    call(request, timeout=60)
                assert raised.value.code() == grpc.StatusCode.UNAVAILABLE, raised.value
                assert "store is unavailable" in raised.value.details()
    finally:
        service.stop(0)
