"""Faces drawn on a stored image (issue 30: IngestService.AddFace), on every backend: a drawn face
is stored like a detected one (crop, embedding, unknown until labelled), says who drew it, never
duplicates a stored face, gets an id no face of the image ever had, and erases like any face."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from test_store_conformance import make_image
from test_store_erasure import assert_faces_gone, assert_only_erasure_names
from visage.store.base import AlreadyExists, NotFound
from visage.store.records import FaceRecord, ImageRecord
from visage.v1 import resources_pb2 as pb

RNG = np.random.default_rng(30)


def drawn(image_id: str, box: tuple[int, int, int, int], by: str = "alice") -> FaceRecord:
    """A face as AddFace hands it to the store: no id or index yet."""
    return FaceRecord("", image_id, -1, box, [(1.0, 2.0)] * 5, RNG.standard_normal(128).astype(np.float32),
                      b"drawn crop", drawn_by=by)


@pytest.fixture
def photo(store):
    """One image with two detected faces, (0,20,50,90) and (10,20,60,90), ids as ingest makes them."""
    image, content, faces = make_image(store, "photo", faces=2)
    for face in faces:
        face.face_id = f"photo-{face.index}"
    store.put_image(image, content, faces)
    return image, faces


def test_a_drawn_face_is_stored_like_a_detected_one_and_says_who_drew_it(store, photo):
    image, detected = photo
    face = store.add_face(drawn("photo", (300, 100, 380, 190)))
    assert (face.face_id, face.index) == ("photo-2", 2)
    stored = store.get_face(face.face_id)
    assert stored.drawn_by == "alice" and stored.crop_jpeg == b"drawn crop" and stored.box == (300, 100, 380, 190)
    assert np.array_equal(stored.embedding, face.embedding)
    assert [f.face_id for f in store.faces_of_image("photo")] == ["photo-0", "photo-1", "photo-2"]
    assert [f.drawn_by for f in store.faces_of_images(["photo"])["photo"]] == ["", "", "alice"]
    assert store.get_image("photo").face_count == 3
    assert face.face_id in {key.face_id for key in store.list_unknown_faces(None, 10)}
    assert face.face_id in {i for batch, _ in store.iter_embeddings() for i in batch}
    added = [e for e in store.read_events("", 1000) if e.type == pb.EVENT_TYPE_FACE_ADDED]
    assert [(e.subject, e.attributes["image_id"]) for e in added] == [(face.face_id, "photo")]


def test_a_face_drawn_with_a_persona_is_labelled_by_its_drawer(store, photo):
    penny = store.create_persona("Penny")
    face = store.add_face(drawn("photo", (300, 100, 380, 190), by="bob"), penny.persona_id)
    [label] = store.labels_of_face(face.face_id)
    assert (label.persona_id, label.verdict, label.labelled_by) == (penny.persona_id, pb.VERDICT_BELONGS, "bob")
    assert face.face_id not in {key.face_id for key in store.list_unknown_faces(None, 10)}
    types = [e.type for e in store.read_events("", 1000) if e.subject == face.face_id]
    assert types == [pb.EVENT_TYPE_FACE_ADDED, pb.EVENT_TYPE_FACE_LABELLED]


def test_a_box_over_a_stored_face_is_refused_naming_it_and_stores_nothing(store, photo):
    _image, detected = photo
    before = store.read_events("", 1000)
    # Covering more than half of photo-1 (10,20,60,90); and one inside a stored box.
    for box in [(20, 30, 75, 100), (15, 30, 40, 60)]:
        with pytest.raises(AlreadyExists, match="photo-[01]"):
            store.add_face(drawn("photo", box))
    assert [f.face_id for f in store.faces_of_image("photo")] == ["photo-0", "photo-1"]
    assert store.get_image("photo").face_count == 2
    assert store.read_events("", 1000) == before


def test_an_unknown_image_or_persona_is_not_found_and_stores_nothing(store, photo):
    with pytest.raises(NotFound, match="image"):
        store.add_face(drawn("nowhere", (300, 100, 380, 190)))
    with pytest.raises(NotFound, match="persona"):
        store.add_face(drawn("photo", (300, 100, 380, 190)), "no-such-persona")
    assert len(store.faces_of_image("photo")) == 2
    assert not [e for e in store.read_events("", 1000) if e.type == pb.EVENT_TYPE_FACE_ADDED]


def test_a_drawn_face_never_takes_the_id_of_an_erased_face(store, photo):
    """photo-1 erased: a face drawn next is photo-2, not photo-1 (the ledger names photo-1, and a
    restore would erase whatever carries that id)."""
    store.delete_face("photo-1")
    first = store.add_face(drawn("photo", (300, 100, 380, 190)))
    store.delete_face(first.face_id)
    second = store.add_face(drawn("photo", (300, 100, 380, 190)))
    assert (first.face_id, second.face_id) == ("photo-2", "photo-3")


def test_concurrent_draws_on_one_image_get_distinct_faces(store, photo):
    boxes = [(100 + 60 * i, 200, 150 + 60 * i, 260) for i in range(4)]
    made: list[FaceRecord] = []
    threads = [threading.Thread(target=lambda box=box: made.append(store.add_face(drawn("photo", box))))
               for box in boxes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(face.index for face in made) == [2, 3, 4, 5]
    assert sorted(f.box for f in store.faces_of_image("photo")[2:]) == sorted(boxes)


def test_a_drawn_face_erases_like_any_face(store, photo):
    penny = store.create_persona("Penny")
    face = store.add_face(drawn("photo", (300, 100, 380, 190)), penny.persona_id)
    erasure = store.delete_face(face.face_id)
    assert erasure.face_ids == [face.face_id] and erasure.persona_ids == [penny.persona_id]
    assert_faces_gone(store, [face.face_id])
    assert_only_erasure_names(store, {face.face_id})
    assert store.get_image("photo").face_count == 2
    with pytest.raises(NotFound):
        store.delete_face(face.face_id)


def test_a_drawn_face_goes_with_its_image_and_with_its_persona(store, photo):
    penny = store.create_persona("Penny")
    face = store.add_face(drawn("photo", (300, 100, 380, 190)), penny.persona_id)
    erasure = store.delete_persona(penny.persona_id, erase_faces=True)
    assert erasure.image_ids == ["photo"] and face.face_id in erasure.face_ids
    assert_faces_gone(store, [face.face_id, "photo-0", "photo-1"])
    assert_only_erasure_names(store, {face.face_id, "photo"})

    other, content, _faces = make_image(store, "other", faces=0)
    store.put_image(ImageRecord(other.image_id, "other.jpg", "image/jpeg", 640, 480, len(content), 0,
                                pb.IMAGE_STATUS_NO_FACE), content, [])
    face = store.add_face(drawn("other", (300, 100, 380, 190)))
    assert store.get_image("other").status == pb.IMAGE_STATUS_FACES_FOUND  # a face now
    store.delete_image("other")
    assert_faces_gone(store, [face.face_id])
    assert_only_erasure_names(store, {face.face_id, "other"})
