"""TrainService over a real gRPC channel: label events train, evaluate,
version and activate a model; operators start, watch, list and roll back."""
from __future__ import annotations

import dataclasses
import queue
import time

import grpc
import numpy as np
import pytest

from visage.model import Predictor
from visage.store.records import LabelRecord, TrainingJobRecord
from visage.v1 import resources_pb2 as pb
from visage.v1 import train_pb2, train_pb2_grpc
from visage_trainer.server import Trainer, TrainServicer, start
from visage_trainer.training import TrainerSettings

from trainer_helpers import held_out

FAST = TrainerSettings(debounce_seconds=0.3, gate_margin=0.05, poll_seconds=0.05)


def serve(config, store, settings=FAST):
    service = start(config, store, "127.0.0.1:0", settings)
    channel = grpc.insecure_channel(f"127.0.0.1:{service.port}")
    stub = train_pb2_grpc.TrainServiceStub(channel)
    stub.address = f"127.0.0.1:{service.port}"
    return service, channel, stub


@pytest.fixture
def trainer_service(config, world):
    service, channel, stub = serve(config, world.store)
    yield stub, service
    channel.close()
    service.stop(0)


def wait_for_version(store, version: int, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        active = store.active_model_version()
        if active is not None and active.version == version:
            return active
        time.sleep(0.05)
    raise AssertionError(f"version {version} did not become active; jobs: {store.list_training_jobs(5)}")


def predictor_of(store, record) -> Predictor:
    return Predictor.load(record, store.get_model_artifact(record.version))


def test_labels_become_an_active_evaluated_model(trainer_service, world):
    stub, _ = trainer_service
    with pytest.raises(grpc.RpcError) as missing:
        stub.GetActiveModelVersion(train_pb2.GetActiveModelVersionRequest())
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    world.label_training_faces()  # a burst of 35 label events
    wait_for_version(world.store, 1)
    active = stub.GetActiveModelVersion(train_pb2.GetActiveModelVersionRequest())
    assert active.state == pb.MODEL_STATE_ACTIVE and active.gate_reason.startswith("first version")
    assert set(active.persona_ids) == set(world.personas.values())
    assert active.metrics.labelled_faces == 35 and active.metrics.accuracy > 0.9
    assert active.lineage.label_count == 35 and len(active.lineage.label_set_sha256) == 64
    assert active.lineage.library_versions["onnxruntime"] and active.lineage.event_cursor
    jobs = stub.ListTrainingJobs(train_pb2.ListTrainingJobsRequest()).training_jobs
    assert [(j.trigger, j.phase, j.activated) for j in jobs] == [
        (pb.TRAINING_TRIGGER_EVENTS, pb.TRAINING_PHASE_SUCCEEDED, True)]  # the burst trained once
    progress = [e for e in world.store.read_events("", 10000) if e.type == pb.EVENT_TYPE_TRAINING_PROGRESS]
    assert progress[-1].attributes["phase"] == "TRAINING_PHASE_SUCCEEDED"
    assert {e.attributes["phase"] for e in progress} >= {"TRAINING_PHASE_READING", "TRAINING_PHASE_FITTING",
                                                         "TRAINING_PHASE_EVALUATING", "TRAINING_PHASE_EXPORTING",
                                                         "TRAINING_PHASE_STORING"}

    predictor = predictor_of(world.store, world.store.active_model_version())
    testing = [p for p in world.photos if p.group != "noise" and held_out(p)]
    answers, _ = predictor.predict(np.stack([p.embedding for p in testing]))
    assert answers == [world.personas[p.person] for p in testing]
    noise = [p for p in world.photos if p.group == "noise"]
    assert predictor.predict(np.stack([p.embedding for p in noise]))[0] == [""] * len(noise)


def test_a_version_is_active_only_with_its_gate_reason_recorded(config, world, monkeypatch):
    """Whoever reads the active version (a watcher woken by MODEL_VERSION_ACTIVATED, a
    restart test polling the store) sees why it went live: the reason used to be written
    after the activation, so a reader in between saw an active version with no reason."""
    seen_at_activation = []
    activate = world.store.activate_model_version

    def activate_and_look(version, gate_reason=None):
        activated = activate(version, gate_reason)
        seen_at_activation.append(world.store.get_model_version(version).gate_reason)
        return activated
    monkeypatch.setattr(world.store, "activate_model_version", activate_and_look)
    service, channel, _stub = serve(config, world.store)
    try:
        world.label_training_faces()
        wait_for_version(world.store, 1)
    finally:
        channel.close(), service.stop(0)
    assert seen_at_activation and seen_at_activation[0].startswith("first version")


def test_a_does_not_belong_label_changes_the_next_model_and_rollback_restores(trainer_service, world):
    stub, _ = trainer_service
    world.label_training_faces()
    first = wait_for_version(world.store, 1)
    face = next(p for p in world.photos if p.person == "penny" and held_out(p))
    penny = world.personas["penny"]
    assert predictor_of(world.store, first).predict(face.embedding[None])[0] == [penny]

    world.store.put_label(LabelRecord(world.face_ids[face.path], penny, pb.VERDICT_NOT_BELONGS))
    second = wait_for_version(world.store, 2)
    assert second.lineage["parent_version"] == 1
    assert predictor_of(world.store, second).predict(face.embedding[None])[0] != [penny]

    rolled_back = stub.ActivateModelVersion(train_pb2.ActivateModelVersionRequest(version=1))
    assert rolled_back.state == pb.MODEL_STATE_ACTIVE
    assert world.store.active_model_version().version == 1
    assert world.store.get_model_version(2).state == pb.MODEL_STATE_RETIRED
    activations = [e.subject for e in world.store.read_events("", 10000)
                   if e.type == pb.EVENT_TYPE_MODEL_VERSION_ACTIVATED]
    assert activations[-1] == "1"
    with pytest.raises(grpc.RpcError) as unknown:
        stub.ActivateModelVersion(train_pb2.ActivateModelVersionRequest(version=99))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND and "99" in unknown.value.details()


def test_start_training_streams_every_phase_to_the_watcher(trainer_service, world):
    stub, _ = trainer_service
    world.label_training_faces()
    wait_for_version(world.store, 1)
    job = stub.StartTraining(train_pb2.StartTrainingRequest(reason="nightly"))
    assert job.trigger == pb.TRAINING_TRIGGER_MANUAL and job.message == "nightly"
    seen = list(stub.WatchTrainingJobs(train_pb2.WatchTrainingJobsRequest(job_id=job.job_id), timeout=30))
    phases = [update.phase for update in seen]
    assert phases[-1] == pb.TRAINING_PHASE_SUCCEEDED and phases == sorted(phases)
    assert seen[-1].model_version == 2 and seen[-1].metrics.labelled_faces == 35
    assert seen[-1].faces_read == 35
    assert stub.GetTrainingJob(train_pb2.GetTrainingJobRequest(job_id=job.job_id)).phase == pb.TRAINING_PHASE_SUCCEEDED


class OpenStream:
    """The part of a grpc.ServicerContext a non-blocking watch stream uses, for a client that stays."""
    def add_callback(self, callback) -> bool:
        return True

    def send_initial_metadata(self, metadata) -> None:
        pass

    def set_code(self, code) -> None:
        self.code = code

    def set_details(self, details) -> None:
        pass


def test_a_watcher_never_sees_a_job_go_back_a_phase(world):
    """A watcher reads the job's stored state after subscribing; updates published in
    between are older than that state and used to be sent after it (phases 4, 2, 3, 4...)."""
    trainer = Trainer(world.store, FAST)  # its board only: no worker thread
    evaluating = TrainingJobRecord("job-1", pb.TRAINING_TRIGGER_MANUAL, pb.TRAINING_PHASE_EVALUATING,
                                   create_time=10.0, update_time=20.0)
    world.store.put_training_job(evaluating)
    sent: queue.Queue = queue.Queue()  # what the stream sends; None: its end
    context = OpenStream()
    TrainServicer(world.store, trainer).WatchTrainingJobs(
        train_pb2.WatchTrainingJobsRequest(job_id="job-1"), context, sent.put)
    assert sent.get(timeout=60).phase == pb.TRAINING_PHASE_EVALUATING
    trainer.board.publish(dataclasses.replace(evaluating, phase=pb.TRAINING_PHASE_READING, update_time=15.0))
    trainer.board.publish(evaluating)
    trainer.board.publish(dataclasses.replace(evaluating, phase=pb.TRAINING_PHASE_SUCCEEDED, update_time=30.0))
    assert [update.phase for update in iter(lambda: sent.get(timeout=60), None)] == [pb.TRAINING_PHASE_SUCCEEDED]
    assert context.code == grpc.StatusCode.OK


def test_watching_all_jobs_follows_jobs_started_later(trainer_service, world):
    stub, _ = trainer_service
    world.label_training_faces()
    wait_for_version(world.store, 1)
    stream = stub.WatchTrainingJobs(train_pb2.WatchTrainingJobsRequest(), timeout=30)
    stream.initial_metadata()  # sent once the stream has subscribed: no job can be missed
    job = stub.StartTraining(train_pb2.StartTrainingRequest())
    for update in stream:
        if update.job_id == job.job_id and update.phase == pb.TRAINING_PHASE_SUCCEEDED:
            break
    stream.cancel()


def test_lists_page_and_bad_requests_get_clear_statuses(trainer_service, world):
    stub, _ = trainer_service
    world.label_training_faces()
    wait_for_version(world.store, 1)
    for _ in range(2):
        job = stub.StartTraining(train_pb2.StartTrainingRequest())
        list(stub.WatchTrainingJobs(train_pb2.WatchTrainingJobsRequest(job_id=job.job_id), timeout=30))
    first = stub.ListModelVersions(train_pb2.ListModelVersionsRequest(page_size=2))
    assert [v.version for v in first.model_versions] == [3, 2] and first.next_page_token
    second = stub.ListModelVersions(train_pb2.ListModelVersionsRequest(page_size=2, page_token=first.next_page_token))
    assert [v.version for v in second.model_versions] == [1] and not second.next_page_token
    jobs = stub.ListTrainingJobs(train_pb2.ListTrainingJobsRequest(page_size=1))
    assert len(jobs.training_jobs) == 1 and jobs.next_page_token

    bad_calls = [
        (lambda: stub.ListModelVersions(train_pb2.ListModelVersionsRequest(page_token="garbage!")),
         grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: stub.ListModelVersions(train_pb2.ListModelVersionsRequest(page_token=jobs.next_page_token)),
         grpc.StatusCode.INVALID_ARGUMENT),  # a jobs token is not a versions token
        (lambda: stub.ListTrainingJobs(train_pb2.ListTrainingJobsRequest(page_size=-1)),
         grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: stub.GetModelVersion(train_pb2.GetModelVersionRequest(version=42)), grpc.StatusCode.NOT_FOUND),
        (lambda: stub.GetTrainingJob(train_pb2.GetTrainingJobRequest(job_id="nope")), grpc.StatusCode.NOT_FOUND),
        (lambda: stub.GetTrainingJob(train_pb2.GetTrainingJobRequest()), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: list(stub.WatchTrainingJobs(train_pb2.WatchTrainingJobsRequest(job_id="nope"))),
         grpc.StatusCode.NOT_FOUND),
    ]
    for call, code in bad_calls:
        with pytest.raises(grpc.RpcError) as error:
            call()
        assert error.value.code() == code and error.value.details()
    assert stub.GetModelVersion(train_pb2.GetModelVersionRequest(version=1)).version == 1  # still serving


def test_a_candidate_failing_the_gate_is_stored_rejected_and_not_activated(config, world):
    world.label_training_faces()
    service, channel, stub = serve(config, world.store)
    try:
        wait_for_version(world.store, 1)
    finally:
        service.stop(0), channel.close()
    # A negative margin demands a better model than the active one: impossible at accuracy 1.0.
    strict = TrainerSettings(debounce_seconds=0.3, gate_margin=-0.5, poll_seconds=0.05)
    service, channel, stub = serve(config, world.store, strict)
    try:
        job = stub.StartTraining(train_pb2.StartTrainingRequest())
        final = list(stub.WatchTrainingJobs(train_pb2.WatchTrainingJobsRequest(job_id=job.job_id), timeout=30))[-1]
        assert final.phase == pb.TRAINING_PHASE_SUCCEEDED and not final.activated
        rejected = stub.GetModelVersion(train_pb2.GetModelVersionRequest(version=final.model_version))
        assert rejected.state == pb.MODEL_STATE_REJECTED and rejected.gate_reason.startswith("rejected")
        assert stub.GetActiveModelVersion(train_pb2.GetActiveModelVersionRequest()).version == 1
    finally:
        service.stop(0), channel.close()


def test_cli_trains_lists_and_activates(trainer_service, world, capsys):
    from visage.cli import main
    world.label_training_faces()
    wait_for_version(world.store, 1)
    target = trainer_service[0].address
    assert main(["train", "--address", target, "--reason", "from the cli"]) == 0
    out = capsys.readouterr().out
    assert "TRAINING_PHASE_SUCCEEDED" in out and "accuracy 1.000" in out
    assert main(["models", "--address", target, "list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[1].split()[:2] == ["2", "active"] and listing[2].split()[:2] == ["1", "retired"]
    assert main(["models", "--address", target, "activate", "1"]) == 0
    assert world.store.active_model_version().version == 1
    assert main(["models", "--address", target, "activate", "7"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err


def test_deleting_a_persona_retrains_without_it(trainer_service, world):
    world.label_training_faces()
    wait_for_version(world.store, 1)
    world.store.delete_persona(world.personas["obama"])
    second = wait_for_version(world.store, 2)
    assert world.personas["obama"] not in second.persona_ids and second.state == pb.MODEL_STATE_ACTIVE
    # the version naming the deleted persona was withdrawn (unlearning), so nothing compared against it
    assert world.store.get_model_version(1).state == pb.MODEL_STATE_WITHDRAWN
    obama = next(p for p in world.photos if p.person == "obama" and held_out(p))
    assert predictor_of(world.store, second).predict(obama.embedding[None])[0] == [""]
