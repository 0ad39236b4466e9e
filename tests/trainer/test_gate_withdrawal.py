"""The gate's decision never undoes a withdrawal: an erasure that withdraws a version
while the gate decides on it (after the verdict, before it is written) leaves the
version withdrawn, whether the gate rejects it or a pin holds it back."""
from __future__ import annotations

import numpy as np
import pytest

from visage import model as modelling
from visage.store.base import WITHDRAWN_REASON
from visage.store.records import ModelVersionRecord
from visage.v1 import resources_pb2 as pb
from visage_trainer import decisions
from visage_trainer.decisions import CheckSet, FaceSet

from trainer_helpers import held_out

NO_FACES = np.zeros((0, 128), np.float32)


class WithdrawnWhileDeciding:
    """The store, where an erasure withdraws `version` the moment the gate has its
    verdict: decide() reads the pin right after it, before writing the decision."""

    def __init__(self, store, version: int) -> None:
        self._store, self._version, self.withdrawn = store, version, False

    def __getattr__(self, name: str):
        return getattr(self._store, name)

    def get_meta(self, key: str) -> str | None:
        if key == decisions.PIN_META_KEY and not self.withdrawn:
            self.withdrawn = True
            self._store.withdraw_model_versions([self._store.get_model_version(self._version)])
        return self._store.get_meta(key)


@pytest.fixture(scope="module")
def trained(photos):
    """A model of the labelled photos, and one held-out photo it names."""
    known = [p for p in photos if p.group != "noise"]
    labels = modelling.LabelAccumulator(len(known))
    training = [p for p in known if not held_out(p)]
    labels.add_belonging([str(i) for i in range(len(training))], [p.person for p in training],
                         np.stack([p.embedding for p in training]))
    model = modelling.fit_and_evaluate(labels)
    return model, modelling.export_onnx(model.model), next(p for p in known if held_out(p))


def stored_candidate(store, trained) -> ModelVersionRecord:
    model, artifact, _ = trained
    return store.put_model_version(ModelVersionRecord(
        0, pb.MODEL_STATE_CANDIDATE, modelling.ALGORITHM, model.unknown_threshold, model.persona_ids,
        model.metrics, {}, gate_reason=decisions.PENDING), artifact)


def assert_withdrawn(store, version: int) -> None:
    after = store.get_model_version(version)
    assert (after.state, after.gate_reason) == (pb.MODEL_STATE_WITHDRAWN, WITHDRAWN_REASON)
    assert store.get_model_artifact(version) is None and store.active_model_version() is None


def test_a_version_withdrawn_while_the_gate_rejects_it_stays_withdrawn(sqlite_store, trained):
    record = stored_candidate(sqlite_store, trained)
    face = trained[2]
    other = next(p for p in record.persona_ids if p != face.person)
    # The face is labelled as someone the candidate does not name it: a label not honoured.
    checks = CheckSet(FaceSet([("face-1", other)], face.embedding[None]), FaceSet(), set(), NO_FACES)
    store = WithdrawnWhileDeciding(sqlite_store, record.version)

    activated, reason = decisions.decide(store, record, checks, margin=0.05)

    assert store.withdrawn and not activated
    assert_withdrawn(sqlite_store, record.version)
    assert "withdrawn" in reason
    assert [e for e in sqlite_store.read_events("", 10_000) if e.type == pb.EVENT_TYPE_MODEL_VERSION_REJECTED] == []


def test_a_version_withdrawn_while_a_pin_holds_it_back_stays_withdrawn(sqlite_store, trained):
    sqlite_store.set_meta(decisions.PIN_META_KEY, "7")  # a version activated by hand, pinned
    record = stored_candidate(sqlite_store, trained)
    checks = CheckSet(FaceSet(), FaceSet(), set(), NO_FACES)
    store = WithdrawnWhileDeciding(sqlite_store, record.version)

    activated, reason = decisions.decide(store, record, checks, margin=0.05, labels_asserted=True)

    assert store.withdrawn and not activated
    assert_withdrawn(sqlite_store, record.version)
    assert "withdrawn" in reason
