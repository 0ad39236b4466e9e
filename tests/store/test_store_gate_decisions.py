"""The gate's decision on a model version (record_gate_decision), on every backend:
recorded on a version that serves or waits, never over a withdrawal (an erasure of
labels the version was trained on), whichever lands first."""
from __future__ import annotations

import pytest

from test_store_erasure import put_version
from test_store_races import replicas, together  # noqa: F401 - replicas is a fixture
from visage.store.base import WITHDRAWN_REASON, Withdrawn
from visage.v1 import resources_pb2 as pb

VERSIONS_RACED = 8


def test_the_gate_decision_is_recorded_on_a_version_not_withdrawn(store):
    rejected, held = put_version(store, ["p1"]), put_version(store, ["p2"])

    assert store.record_gate_decision(rejected.version, pb.MODEL_STATE_REJECTED, "rejected: 3 faces worse")
    assert store.record_gate_decision(held.version, pb.MODEL_STATE_CANDIDATE, "passed; not activated: pinned")

    assert (store.get_model_version(rejected.version).state, store.get_model_version(rejected.version).gate_reason) \
        == (pb.MODEL_STATE_REJECTED, "rejected: 3 faces worse")
    assert (store.get_model_version(held.version).state, store.get_model_version(held.version).gate_reason) \
        == (pb.MODEL_STATE_CANDIDATE, "passed; not activated: pinned")


@pytest.mark.parametrize("state", [pb.MODEL_STATE_REJECTED, pb.MODEL_STATE_CANDIDATE], ids=["rejected", "pinned"])
def test_a_withdrawn_version_stays_withdrawn_whatever_the_gate_decides(store, state):
    penny = store.create_persona("Penny").persona_id
    version = put_version(store, [penny])
    assert store.delete_persona(penny).withdrawn_versions == [version.version]  # while the gate decided

    assert store.record_gate_decision(version.version, state, "the gate's late verdict") is False

    after = store.get_model_version(version.version)
    assert (after.state, after.gate_reason) == (pb.MODEL_STATE_WITHDRAWN, WITHDRAWN_REASON)
    assert store.get_model_artifact(version.version) is None
    with pytest.raises(Withdrawn):
        store.activate_model_version(version.version)


def test_a_gate_decision_on_a_missing_version_records_nothing(store):
    assert store.record_gate_decision(999, pb.MODEL_STATE_REJECTED, "rejected") is False
    assert store.get_model_version(999) is None and store.list_model_versions() == []


def test_withdrawals_racing_gate_decisions_all_stand(store, replicas):  # noqa: F811
    """From separate store instances (as replicas hold them), started together: whichever
    lands first, the withdrawal stands."""
    versions = [put_version(store, [f"p{n}"]) for n in range(VERSIONS_RACED)]
    decide, withdraw = replicas[1], replicas[2]

    for version in versions:
        recorded, _ = together([
            lambda v=version: decide.record_gate_decision(v.version, pb.MODEL_STATE_REJECTED, "rejected"),
            lambda v=version: withdraw.withdraw_model_versions([v])])
        after = store.get_model_version(version.version)
        assert (after.state, after.gate_reason) == (pb.MODEL_STATE_WITHDRAWN, WITHDRAWN_REASON), (version, recorded)
