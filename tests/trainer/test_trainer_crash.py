"""kill -9 of a trainer process mid-training leaves the previous version
active and nothing half-written; the restarted trainer resumes from its event
cursor and trains the labels it missed."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from visage.store.records import FaceRecord, ImageRecord, LabelRecord
from visage.v1 import resources_pb2 as pb

from test_trainer_service import wait_for_version
from visage.loopback import free_port

EXTRA_FACES = 60_000  # enough that reading them takes long enough to kill the job mid-way


def start_trainer(config, log_path):
    env = {**os.environ, "VISAGE_DATA_DIR": str(config.data_dir), "VISAGE_STORE": "sqlite",
           "VISAGE_HOST": "127.0.0.1", "VISAGE_TRAINER_PORT": str(free_port()),
           "VISAGE_TRAIN_DEBOUNCE_SECONDS": "2"}  # one job after the whole burst, even on a busy machine
    return subprocess.Popen([sys.executable, "-m", "visage_trainer"], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(log_path, "wb"))


def add_synthetic_labelled_faces(store, persona_id: str, centre: np.ndarray, count: int) -> None:
    rng = np.random.default_rng(7)
    for batch in range(count // 1000):
        image_id = f"{batch + 10_000:064x}"
        embeddings = centre + rng.normal(scale=0.02, size=(1000, 128)).astype(np.float32)
        faces = [FaceRecord(f"{image_id}-{i}", image_id, i, (0, 0, 1, 1), [], e) for i, e in enumerate(embeddings)]
        store.put_image(ImageRecord(image_id, "synthetic", "image/png", 1, 1, 1, 1000, pb.IMAGE_STATUS_FACES_FOUND),
                        b"", faces)
        for face in faces:
            store.put_label(LabelRecord(face.face_id, persona_id, pb.VERDICT_BELONGS))


def wait_for_phase(store, phases, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = store.list_training_jobs(1)
        if jobs and jobs[0].phase in phases:
            return jobs[0]
        time.sleep(0.01)
    raise AssertionError(f"no job reached {phases}")


@pytest.mark.slow
def test_kill_9_mid_training_keeps_the_previous_version_and_restart_resumes(config, world, tmp_path):
    store = world.store
    world.label_training_faces()
    trainer = start_trainer(config, tmp_path / "trainer1.log")
    try:
        wait_for_version(store, 1, timeout=60)
        howard = next(p for p in world.photos if p.person == "howard")
        add_synthetic_labelled_faces(store, world.personas["howard"], howard.embedding, EXTRA_FACES)
        job = wait_for_phase(store, (pb.TRAINING_PHASE_READING, pb.TRAINING_PHASE_FITTING,
                                     pb.TRAINING_PHASE_EVALUATING, pb.TRAINING_PHASE_EXPORTING))
        trainer.send_signal(signal.SIGKILL)
        trainer.wait(timeout=10)
    finally:
        if trainer.poll() is None:
            trainer.kill()

    assert [v.version for v in store.list_model_versions()] == [1]  # no half-written version
    assert store.active_model_version().version == 1
    assert store.get_training_job(job.job_id).phase not in (pb.TRAINING_PHASE_SUCCEEDED, pb.TRAINING_PHASE_FAILED)

    restarted = start_trainer(config, tmp_path / "trainer2.log")
    try:
        second = wait_for_version(store, 2, timeout=120)
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(timeout=30)
    assert second.lineage["label_count"] == 35 + EXTRA_FACES
    assert store.get_model_artifact(2)
    interrupted = store.get_training_job(job.job_id)
    assert interrupted.phase == pb.TRAINING_PHASE_FAILED and "interrupted" in interrupted.message
