"""Re-classification shared by replicas, on both stores: each replica (its own store
instance over the same data) claims shards of the version's job; every shard is done once,
a dead replica's shard is taken over when its lease ends (an injected clock ends it: no
sleeping), progress counts every replica's shards, and the end is announced once."""
from __future__ import annotations

import time

import pytest

from tests.classifier.conftest import activate_model, personas_for, put_faces
from tests.classifier.test_reclassify import noisy_copies
from visage.config import Config
from visage.store import open_store
from visage.store.records import LabelRecord
from visage.v1 import resources_pb2 as pb
from visage_classifier.models import ActiveModel
from visage_classifier.reclassify import SUCCEEDED, Reclassifier, SharedWork, follow, shared_job

SHARDS = 4
FACES = 1200


class Clock:
    """Wall-clock time plus an offset the test moves forward (to end leases at will)."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.time() + self.ahead


@pytest.fixture(params=["sqlite", pytest.param("cassandra", marks=pytest.mark.cassandra)])
def replica_config(request, config) -> Config:
    """A config each replica opens its own store with (one database for all)."""
    if request.param == "sqlite":
        return config
    return Config(store="cassandra", cassandra=request.getfixturevalue("cassandra_config"),
                  data_dir=config.data_dir)


@pytest.fixture
def world(replica_config, crop_embeddings):
    """FACES lookalike faces, the first 10 labelled; an active version. Yields (store, ids, version)."""
    store = open_store(replica_config)
    ids = personas_for(store, crop_embeddings)
    rows, names = noisy_copies(crop_embeddings, FACES)
    face_ids = put_faces(store, rows, faces_per_image=300)
    for face_id, name in zip(face_ids[:10], names[:10]):
        store.put_label(LabelRecord(face_id, ids[name], pb.VERDICT_BELONGS))
    version = activate_model(store, {ids[n]: r for n, r in crop_embeddings.items()})
    yield store, face_ids, version
    store.close()


@pytest.fixture
def replicas(replica_config):
    """make(clock) -> a Reclassifier of a new replica (own store instance, own owner name)."""
    made = []

    def make(clock=time.time) -> Reclassifier:
        store = open_store(replica_config)
        reclassifier = Reclassifier(store, ActiveModel(store), batch_rows=100,
                                    work=SharedWork(shards=SHARDS, lease_seconds=60, poll_seconds=0.05, clock=clock))
        made.append((reclassifier, store))
        return reclassifier

    yield make
    for reclassifier, store in made:
        reclassifier.stop()
        store.close()


def assert_every_unlabelled_face_predicted_once(store, face_ids, version):
    predictions = store.get_predictions(face_ids)
    assert set(predictions) == set(face_ids[10:])  # labelled faces keep their label only
    assert {p.model_version for p in predictions.values()} == {version}
    shards = store.job_shards(shared_job(version))
    assert [s.shard for s in shards] == list(range(SHARDS)) and all(s.done for s in shards)
    assert sum(s.faces for s in shards) == FACES - 10  # each face done by exactly one shard
    written = [e for e in store.read_events("", 100_000) if e.type == pb.EVENT_TYPE_PREDICTIONS_WRITTEN]
    assert [e.subject for e in written] == [str(version)]  # announced once, whoever finished last


def test_two_replicas_share_one_version_and_both_report_all_of_it(world, replicas):
    store, face_ids, version = world
    runs = [replicas().start_or_join(shared=True) for _ in range(2)]
    finals = [list(follow(run, lambda: True))[-1] for run in runs]
    for final in finals:
        assert (final.state, final.model_version) == (SUCCEEDED, version)
        assert final.done == final.total == FACES - 10  # every replica's shards, not only its own
    assert_every_unlabelled_face_predicted_once(store, face_ids, version)


def test_a_dead_replicas_shard_is_taken_over_when_its_lease_ends(world, replicas):
    store, face_ids, version = world
    job = shared_job(version)
    dead = store.claim_shard(job, SHARDS, "replica-killed-mid-shard", time.time() + 60, time.time())
    clock = Clock()
    run = replicas(clock).start_or_join(shared=True)
    # The live replica does every other shard, then waits on the dead one's lease.
    deadline = time.monotonic() + 120
    while sum(s.done for s in store.job_shards(job)) < SHARDS - 1:
        assert time.monotonic() < deadline and run.is_alive(), store.job_shards(job)
        time.sleep(0.05)
    assert not run.finished and {s.shard for s in store.job_shards(job) if not s.done} == {dead.shard}
    clock.ahead = 61  # the dead replica's lease has ended
    final = list(follow(run, lambda: True))[-1]
    assert (final.state, final.done) == (SUCCEEDED, FACES - 10)
    assert store.job_shards(job)[dead.shard].owner != dead.owner
    assert_every_unlabelled_face_predicted_once(store, face_ids, version)
