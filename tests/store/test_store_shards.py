"""Shared work on both stores: shards partition the faces; claims with leases give each
shard to one replica at a time, a lease that ends lets another take it over, a finished
shard is never claimed again. Lease expiry runs on explicit times, never on sleeps."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from test_store_races import replicas, together  # noqa: F401 - the fixture is used below
from visage.store.records import FaceRecord, ImageRecord
from visage.v1 import resources_pb2 as pb


def put_faces(store, images: int = 40, per_image: int = 3) -> set[str]:
    ids = set()
    for n in range(images):
        image_id = hashlib.sha256(b"%d" % n).hexdigest() if n % 10 else f"odd-id-{n}"  # not every id is hex
        faces = [FaceRecord(f"{image_id}-{i}", image_id, i, (0, 0, 1, 1), [], np.full(128, n, np.float32))
                 for i in range(per_image)]
        store.put_image(ImageRecord(image_id, "x", "image/jpeg", 1, 1, 1, per_image, pb.IMAGE_STATUS_FACES_FOUND),
                        b"x", faces)
        ids.update(face.face_id for face in faces)
    return ids


@pytest.mark.parametrize("shards", [1, 3, 16])
def test_shards_hold_every_face_exactly_once(store, shards):
    everyone = put_faces(store)
    seen: list[str] = []
    for shard in range(shards):
        for face_ids, matrix in store.iter_shard_embeddings(shard, shards, batch_size=7):
            assert matrix.shape == (len(face_ids), 128)
            seen += face_ids
    assert len(seen) == len(set(seen)) and set(seen) == everyone
    with pytest.raises(ValueError):
        list(store.iter_shard_embeddings(shards, shards))


@pytest.mark.parametrize("shards", [1, 3, 64])
def test_shard_of_names_the_shard_that_holds_the_face(store, shards):
    """A replica files a newly ingested face under the shard its next run reads it from."""
    put_faces(store)
    for shard in range(shards):
        for face_ids, _matrix in store.iter_shard_embeddings(shard, shards):
            assert [store.shard_of(face_id, shards) for face_id in face_ids] == [shard] * len(face_ids)


def test_a_claim_takes_a_preferred_shard_first(store):
    t = 1000.0
    assert store.claim_shard("job", 8, "a", t + 30, now=t, prefer=[5, 2]).shard == 5
    assert store.claim_shard("job", 8, "a", t + 30, now=t, prefer=[5, 2]).shard == 2
    third = store.claim_shard("job", 8, "a", t + 30, now=t, prefer=[5, 2])  # both held: any other
    assert third is not None and third.shard not in (5, 2)


def test_leases_hand_each_shard_to_one_owner_and_expired_ones_over(store):
    t = 1000.0
    a = store.claim_shard("job", 3, "a", t + 30, now=t)
    b = store.claim_shard("job", 3, "b", t + 30, now=t)
    c = store.claim_shard("job", 3, "c", t + 30, now=t)
    assert sorted(s.shard for s in (a, b, c)) == [0, 1, 2]
    assert store.claim_shard("job", 3, "d", t + 30, now=t + 29) is None  # all held
    assert store.renew_shard("job", a.shard, "a", t + 60, faces=5)
    assert store.finish_shard("job", b.shard, "b", faces=7)
    # c dies: its lease ends at t + 30; a renewed to t + 60
    taken = store.claim_shard("job", 3, "d", t + 90, now=t + 31)
    assert taken.shard == c.shard
    assert not store.renew_shard("job", c.shard, "c", t + 100, faces=1)  # c lost it and must stop
    assert not store.finish_shard("job", c.shard, "c", faces=1)
    assert store.claim_shard("job", 3, "e", t + 200, now=t + 61).shard == a.shard  # a stopped renewing too
    f = store.claim_shard("job", 3, "f", t + 999, now=t + 500)  # d's and e's leases ended: one is taken
    loser, keeper = ("d", "e") if f.shard == c.shard else ("e", "d")
    assert {f.shard: loser, ({a.shard, c.shard} - {f.shard}).pop(): keeper}.keys() == {a.shard, c.shard}
    assert not store.finish_shard("job", f.shard, loser, faces=9)
    assert store.finish_shard("job", f.shard, "f", faces=9)
    states = {s.shard: s for s in store.job_shards("job")}
    assert states[b.shard].done and states[b.shard].faces == 7
    assert store.claim_shard("job", 3, "g", t + 9999, now=t + 5000).shard != b.shard  # finished: never again
    assert store.job_shards("other-job") == []
    assert store.complete_job("job") and not store.complete_job("job")
    assert len(store.job_shards("job")) == 3


def test_concurrent_claims_give_each_shard_to_one_replica(store, replicas):  # noqa: F811
    claims = together([lambda s=s, i=i: s.claim_shard("job", 4, f"r{i}", 2000.0, now=1000.0)
                       for i, s in enumerate(replicas)])
    won = [c for c in claims if c is not None]
    assert sorted(c.shard for c in won) == [0, 1, 2, 3]
    assert {s.shard: s.owner for s in store.job_shards("job")} == {c.shard: c.owner for c in won}
