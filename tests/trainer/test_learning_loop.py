"""The learning loop as a user drives it, on the shared photos, with the
store on SQLite and on a real Cassandra: every label takes effect (the
"three quick 'not Obama' labels" report), rollbacks stay put (pins), gate
decisions are visible (MODEL_VERSION_REJECTED, `visage train`), a crash
between storing and activating a version is decided on restart, and old
models are deleted by retention."""
from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from visage.store.records import LabelRecord
from visage.v1 import resources_pb2 as pb
from visage.v1 import train_pb2
from visage_trainer import decisions
from visage_trainer.training import TrainerSettings

from test_trainer_service import predictor_of, serve
from trainer_helpers import held_out, store_photos

FAST = TrainerSettings(debounce_seconds=0.3, gate_margin=0.05, poll_seconds=0.05)


@pytest.fixture(params=["sqlite", "cassandra"])
def loop_store(request):
    return request.getfixturevalue("sqlite_store" if request.param == "sqlite" else "cassandra_store")


class SharedSet:
    """The shared set as the issue's user had it: 8 bbt people + Obama + Biden
    (45 faces) labelled, the edge/ Obama faces and noise/ strangers ingested unlabelled."""

    def __init__(self, store, photos, edge_photos):
        self.store = store
        self.known = [p for p in photos if p.group != "noise"]
        self.noise = [p for p in photos if p.group == "noise"]
        self.edge = edge_photos
        self.face_ids = store_photos(store, photos + edge_photos)
        self.personas = {name: store.create_persona(name.title()).persona_id
                         for name in sorted({p.person for p in self.known})}

    def label_everything_known(self) -> None:
        for photo in self.known:
            self.label(photo, photo.person, pb.VERDICT_BELONGS)

    def label(self, photo, person: str, verdict: int) -> None:
        self.store.put_label(LabelRecord(self.face_ids[photo.path], self.personas[person], verdict))

    def names(self, record, photos) -> list[str]:
        """What the version calls these faces (person names, "" = unknown)."""
        by_id = {v: k for k, v in self.personas.items()}
        said, _ = predictor_of(self.store, record).predict(np.stack([p.embedding for p in photos]))
        return [by_id.get(s, s) for s in said]


@pytest.fixture
def shared(loop_store, photos, edge_photos):
    return SharedSet(loop_store, photos, edge_photos)


@pytest.fixture
def trainer(config, shared):
    service, channel, stub = serve(config, shared.store, FAST)
    yield stub
    channel.close()
    service.stop(0)


def wait_for_active(store, predicate, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        active = store.active_model_version()
        if active is not None and predicate(active):
            return active
        time.sleep(0.05)
    raise AssertionError(f"no active version as expected; versions: "
                         f"{[(v.version, v.state, v.gate_reason) for v in store.list_model_versions()]}")


def wait_for_version_stored(store, version: int, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = store.get_model_version(version)
        if record is not None and record.gate_reason != decisions.PENDING:
            return record
        time.sleep(0.05)
    raise AssertionError(f"version {version} was not stored and decided; jobs: {store.list_training_jobs(3)}")


def labels_in(count: int):
    return lambda record: record.lineage.get("label_count") == count


def rejections(store) -> list:
    return [e for e in store.read_events("", 100000) if e.type == pb.EVENT_TYPE_MODEL_VERSION_REJECTED]


def test_three_quick_not_obama_labels_take_effect_and_the_loop_keeps_going(shared, trainer, capsys):
    shared.label_everything_known()
    first = wait_for_active(shared.store, labels_in(45))
    assert shared.names(first, shared.edge) == ["obama"] * 3  # the faces the user will correct

    for photo in shared.edge:  # three quick "does not belong to Obama" labels
        shared.label(photo, "obama", pb.VERDICT_NOT_BELONGS)
    corrected = wait_for_active(shared.store, labels_in(48))
    assert "obama" not in shared.names(corrected, shared.edge), corrected.gate_reason
    near_duplicates = decisions.near_duplicates(np.stack([p.embedding for p in shared.edge]))
    said, _ = predictor_of(shared.store, corrected).predict(near_duplicates)
    assert shared.personas["obama"] not in said
    assert shared.names(corrected, shared.known) == [p.person for p in shared.known]  # every label honoured
    assert not corrected.gate_reason.startswith("rejected") and rejections(shared.store) == []

    # A plain "belongs" label after that still produces an active version...
    newcomer = shared.noise[0]
    shared.personas["newcomer"] = shared.store.create_persona("Newcomer").persona_id
    shared.label(newcomer, "newcomer", pb.VERDICT_BELONGS)
    after = wait_for_active(shared.store, labels_in(49))
    assert shared.names(after, [newcomer]) == ["newcomer"]
    assert "obama" not in shared.names(after, shared.edge)

    # ... and so does `visage train`, which says the new version went live.
    from visage.cli import main
    assert main(["train", "--address", trainer.address]) == 0
    out = capsys.readouterr().out
    assert f"version {after.version + 1} is ACTIVE" in out and "confidence: similarity" in out
    assert shared.store.active_model_version().version == after.version + 1


def test_a_rollback_stays_put_until_the_pin_is_released(shared, trainer):
    shared.label_everything_known()
    wait_for_active(shared.store, labels_in(45))
    shared.label(shared.edge[0], "obama", pb.VERDICT_NOT_BELONGS)
    second = wait_for_active(shared.store, labels_in(46))

    rolled_back = trainer.ActivateModelVersion(train_pb2.ActivateModelVersionRequest(version=1))
    assert rolled_back.pinned and "activated by hand" in rolled_back.gate_reason
    shared.label(shared.edge[1], "obama", pb.VERDICT_NOT_BELONGS)  # the label that used to activate silently
    held = wait_for_version_stored(shared.store, second.version + 1)
    assert held.state == pb.MODEL_STATE_CANDIDATE and "pinned" in held.gate_reason
    assert held.lineage["label_count"] == 47
    assert trainer.StartTraining(train_pb2.StartTrainingRequest()).job_id  # training on demand is held too
    wait_for_version_stored(shared.store, second.version + 2)
    assert shared.store.active_model_version().version == 1
    listed = trainer.ListModelVersions(train_pb2.ListModelVersionsRequest()).model_versions
    assert [(v.version, v.pinned) for v in listed if v.pinned] == [(1, True)]

    released = trainer.ReleaseModelPin(train_pb2.ReleaseModelPinRequest())
    assert released.version == second.version + 2 and not released.pinned
    assert "pin on version 1 was released" in released.gate_reason
    assert "obama" not in shared.names(shared.store.active_model_version(), shared.edge[:2])
    shared.label(shared.edge[2], "obama", pb.VERDICT_NOT_BELONGS)  # unpinned: the gate activates again
    assert wait_for_active(shared.store, labels_in(48)).version == second.version + 3


def test_a_rejection_is_an_event_printed_by_train_and_a_rejected_version_can_be_activated_by_hand(
        config, shared, capsys):
    shared.label_everything_known()
    service, channel, stub = serve(config, shared.store, FAST)
    try:
        wait_for_active(shared.store, labels_in(45))
    finally:
        service.stop(0), channel.close()
    # A negative margin demands a better model than the active one on untouched faces: impossible.
    strict = TrainerSettings(debounce_seconds=0.3, gate_margin=-0.5, poll_seconds=0.05)
    service, channel, stub = serve(config, shared.store, strict)
    try:
        from visage.cli import main
        assert main(["train", "--address", stub.address]) == 0
        out = capsys.readouterr().out
        assert "version 2 is NOT ACTIVE: the gate REJECTED it (rejected:" in out
        rejected = stub.GetModelVersion(train_pb2.GetModelVersionRequest(version=2))
        assert rejected.state == pb.MODEL_STATE_REJECTED
        [event] = rejections(shared.store)
        assert event.subject == "2" and event.attributes["reason"] == rejected.gate_reason
        assert event.attributes["active_version"] == "1"

        assert main(["models", "--address", stub.address, "activate", "2"]) == 0
        assert "the gate had rejected it" in capsys.readouterr().out
        by_hand = stub.GetActiveModelVersion(train_pb2.GetActiveModelVersionRequest())
        assert by_hand.version == 2 and by_hand.state == pb.MODEL_STATE_ACTIVE and by_hand.pinned
        assert by_hand.gate_reason.startswith("activated by hand, pinned; the gate said: rejected")
        assert main(["models", "--address", stub.address, "list"]) == 0
        assert capsys.readouterr().out.splitlines()[1].split()[:2] == ["2", "active*"]
    finally:
        service.stop(0), channel.close()


def test_a_version_stored_but_not_activated_before_a_crash_is_decided_on_restart(config, shared, monkeypatch):
    shared.label_everything_known()
    service, channel, stub = serve(config, shared.store, FAST)
    try:
        wait_for_active(shared.store, labels_in(45))
        # The trainer dies right after storing the next version (before its decision).
        def crash(*args, **kwargs):
            raise SystemError("killed between storing and activating")
        monkeypatch.setattr(decisions, "decide", crash)
        for photo in shared.edge:
            shared.label(photo, "obama", pb.VERDICT_NOT_BELONGS)
        stuck = wait_for_stored_pending(shared.store, 2)
        assert stuck.state == pb.MODEL_STATE_CANDIDATE
    finally:
        service.stop(0), channel.close()
    monkeypatch.undo()
    assert shared.store.active_model_version().version == 1

    service, channel, stub = serve(config, shared.store, FAST)  # the restart
    try:
        decided = wait_for_active(shared.store, lambda record: record.version == 2)
        assert not decided.gate_reason.startswith("rejected") and decided.gate_reason
        assert "obama" not in shared.names(decided, shared.edge)
    finally:
        service.stop(0), channel.close()


def wait_for_stored_pending(store, version: int, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = store.list_training_jobs(1)
        if jobs and jobs[0].phase == pb.TRAINING_PHASE_FAILED and store.get_model_version(version):
            return store.get_model_version(version)
        time.sleep(0.05)
    raise AssertionError(f"version {version} not stored; jobs: {store.list_training_jobs(3)}")


def test_retention_keeps_the_newest_models_plus_the_active_and_pinned_ones(config, shared):
    shared.label_everything_known()
    keep_two = TrainerSettings(debounce_seconds=0.3, gate_margin=0.05, poll_seconds=0.05, retention=2)
    service, channel, stub = serve(config, shared.store, keep_two)
    try:
        wait_for_active(shared.store, labels_in(45))
        stub.ActivateModelVersion(train_pb2.ActivateModelVersionRequest(version=1))  # pinned: kept
        for _ in range(4):
            job = stub.StartTraining(train_pb2.StartTrainingRequest())
            list(stub.WatchTrainingJobs(train_pb2.WatchTrainingJobsRequest(job_id=job.job_id), timeout=60))
        kept = {v.version for v in shared.store.list_model_versions() if shared.store.get_model_artifact(v.version)}
        assert kept == {1, 4, 5}
        assert decisions.RETENTION_NOTE in shared.store.get_model_version(2).gate_reason
        with pytest.raises(grpc.RpcError) as gone:
            stub.ActivateModelVersion(train_pb2.ActivateModelVersionRequest(version=3))
        assert gone.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "retention" in gone.value.details()
        assert shared.store.active_model_version().version == 1
    finally:
        service.stop(0), channel.close()


def test_labels_that_contradict_each_other_store_no_version_and_say_which(config, world):
    """The same photo stored twice (identical embeddings), labelled "Penny" and "not Penny": no
    model can honour both, so no version is stored and the job says which faces contradict."""
    from visage.store.records import FaceRecord, ImageRecord
    world.label_training_faces()
    penny = next(p for p in world.photos if p.person == "penny" and not held_out(p))  # labelled Penny
    copy = FaceRecord(f"{'c' * 64}-0", "c" * 64, 0, (0, 0, 150, 150), [], penny.embedding)
    world.store.put_image(ImageRecord("c" * 64, "copy.png", "image/png", 150, 150, 1, 1,
                                      pb.IMAGE_STATUS_FACES_FOUND), b"", [copy])
    world.store.put_label(LabelRecord(copy.face_id, world.personas["penny"], pb.VERDICT_NOT_BELONGS))
    service, channel, stub = serve(config, world.store, FAST)
    try:
        job = stub.StartTraining(train_pb2.StartTrainingRequest())
        final = list(stub.WatchTrainingJobs(train_pb2.WatchTrainingJobsRequest(job_id=job.job_id), timeout=60))[-1]
    finally:
        service.stop(0), channel.close()
    assert final.phase == pb.TRAINING_PHASE_FAILED and not final.model_version
    assert "would not be honoured" in final.message and "'not Penny'" in final.message
    assert copy.face_id in final.message and world.face_ids[penny.path] in final.message
    assert world.store.list_model_versions() == []
