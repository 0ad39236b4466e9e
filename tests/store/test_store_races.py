"""Races the store contract settles (base.py: "Concurrent writers"), on both backends:
writers on separate store instances (as separate replicas hold them) start together
at a barrier; whatever order they land in, the invariants hold."""
from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from store_spec import open_spec
from visage.store.records import FaceRecord, ImageRecord, LabelRecord, ModelVersionRecord
from visage.v1 import resources_pb2 as pb

WRITERS = 6


@pytest.fixture
def replicas(store, store_spec):
    """WRITERS store instances over the same data (the first is the test's own)."""
    others = [open_spec(store_spec) for _ in range(2)]
    yield [[store, *others][i % 3] for i in range(WRITERS)]
    for other in others:
        other.close()


def together(calls):
    """Runs the calls at once (released by one barrier); returns their results in order."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        barrier.wait(timeout=60)
        return call()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def image_with_faces(n: int) -> tuple[ImageRecord, bytes, list[FaceRecord]]:
    image_id = f"race-image-{n}"
    image = ImageRecord(image_id, "a.jpg", "image/jpeg", 10, 10, 5000, 2, pb.IMAGE_STATUS_FACES_FOUND)
    faces = [FaceRecord(f"{image_id}-{i}", image_id, i, (0, 0, 5, 5), [], np.full(128, i, np.float32), b"crop")
             for i in range(2)]
    return image, bytes(range(250)) * 20, faces


def test_concurrent_ingest_of_the_same_image_stores_it_once_with_one_event(store, replicas):
    for n in range(4):
        image, content, faces = image_with_faces(n)
        created = together([lambda s=s: s.put_image(image, content, faces) for s in replicas])
        assert created.count(True) == 1, created
    ingested = Counter(e.subject for e in store.read_events("", 10_000) if e.type == pb.EVENT_TYPE_IMAGE_INGESTED)
    assert ingested == {f"race-image-{n}": 1 for n in range(4)}
    assert store.count_images() == 4 and store.count_faces() == 8


def candidate(n: int) -> ModelVersionRecord:
    return ModelVersionRecord(0, pb.MODEL_STATE_CANDIDATE, "test", 0.5, [f"p{n}"], {}, {})


def test_concurrent_version_writes_get_distinct_numbers(store, replicas):
    numbers = together([lambda s=s, i=i: s.put_model_version(candidate(i), b"onnx-%d" % i).version
                        for i, s in enumerate(replicas)])
    assert sorted(numbers) == list(range(1, WRITERS + 1))
    for i, number in enumerate(numbers):  # each artifact is its writer's, not a mix
        assert store.get_model_artifact(number) == b"onnx-%d" % i


def test_concurrent_activations_leave_exactly_one_active_version(store, replicas):
    versions = [store.put_model_version(candidate(i), b"onnx").version for i in range(WRITERS)]
    for _round in range(3):
        together([lambda s=s, v=v: s.activate_model_version(v) for s, v in zip(replicas, versions)])
        for reader in replicas[:3]:
            listed = reader.list_model_versions()
            active = [v.version for v in listed if v.state == pb.MODEL_STATE_ACTIVE]
            assert len(active) == 1, [(v.version, v.state) for v in listed]
            assert reader.active_model_version().version == active[0]
            assert {v.state for v in listed if v.version != active[0]} == {pb.MODEL_STATE_RETIRED}


def test_concurrent_belongs_labels_leave_one_standing(store, replicas):
    image, content, faces = image_with_faces(0)
    store.put_image(image, content, faces)
    personas = [store.create_persona(f"p{i}").persona_id for i in range(WRITERS)]
    for face in faces:
        together([lambda s=s, p=p: s.put_label(LabelRecord(face.face_id, p, pb.VERDICT_BELONGS))
                  for s, p in zip(replicas, personas)])
        belongs = [l.persona_id for l in store.labels_of_face(face.face_id) if l.verdict == pb.VERDICT_BELONGS]
        assert len(belongs) == 1, belongs
        holders = [p for p in personas if any(l.face_id == face.face_id
                                              for l in store.labels_of_persona(p, pb.VERDICT_BELONGS))]
        assert holders == belongs
    assert sum(1 for l in store.iter_labels() if l.verdict == pb.VERDICT_BELONGS) == len(faces)


def test_a_not_belongs_label_and_a_removal_free_the_face_for_another_persona(store):
    image, content, faces = image_with_faces(0)
    store.put_image(image, content, faces)
    a, b = (store.create_persona(name).persona_id for name in "ab")
    face = faces[0].face_id
    store.put_label(LabelRecord(face, a, pb.VERDICT_BELONGS))
    store.put_label(LabelRecord(face, a, pb.VERDICT_NOT_BELONGS))
    store.put_label(LabelRecord(face, b, pb.VERDICT_BELONGS))
    assert sorted((l.persona_id, l.verdict) for l in store.labels_of_face(face)) == \
        sorted([(a, pb.VERDICT_NOT_BELONGS), (b, pb.VERDICT_BELONGS)])
    assert store.delete_label(face, b)
    store.put_label(LabelRecord(face, a, pb.VERDICT_BELONGS))
    assert [(l.persona_id, l.verdict) for l in store.labels_of_face(face)] == [(a, pb.VERDICT_BELONGS)]
    store.delete_persona(a)  # a face whose BELONGS persona is gone takes a new one
    store.put_label(LabelRecord(face, b, pb.VERDICT_BELONGS))
    assert [(l.persona_id, l.verdict) for l in store.labels_of_face(face)] == [(b, pb.VERDICT_BELONGS)]


def test_concurrent_meta_swaps_each_see_the_value_the_one_before_left(store, replicas):
    """swap_meta is a compare-and-set: concurrent increments lose none, and the values they
    replaced are every value from the first to the last but one, each seen once."""
    rounds = 3
    replaced = [value for _ in range(rounds) for value in together(
        [lambda s=s: s.swap_meta("counter", lambda current: str(int(current or 0) + 1)) for s in replicas])]
    assert store.get_meta("counter") == str(rounds * WRITERS)
    assert sorted(replaced, key=lambda v: int(v or 0)) == [""] + [str(n) for n in range(1, rounds * WRITERS)]
