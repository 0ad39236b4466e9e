"""Organising many faces: suggested people, batch labels, merge, hide, search,
duplicate and normalised names, small thumbnails."""
from __future__ import annotations

import hashlib
import io
import itertools
import time

import grpc
import numpy as np
import pytest
from PIL import Image

from visage.store.records import FaceRecord, ImageRecord
from visage.v1 import query_pb2
from visage.v1 import resources_pb2 as pb

from query_calls import create, label, rpc_error
from waiting import wait_until

_images = itertools.count()
WAIT_SECONDS = 60


def add_faces(store, faces_dir, crop_jpegs, embeddings) -> list[str]:
    """One stored image holding a face per embedding; returns the face ids."""
    number = next(_images)
    content = (faces_dir / "scenes" / "bbt1.jpg").read_bytes() + f"#people{number}".encode()
    image_id = hashlib.sha256(content).hexdigest()
    faces = [FaceRecord(face_id=f"{image_id[:20]}-{index}", image_id=image_id, index=index, box=(0, 0, 40, 40),
                        landmarks=[(1.0, 2.0)] * 5, embedding=np.asarray(embedding, np.float32),
                        crop_jpeg=crop_jpegs[index % len(crop_jpegs)])
             for index, embedding in enumerate(embeddings)]
    store.put_image(ImageRecord(image_id, f"group{number}.jpg", "image/jpeg", 800, 600, len(content), len(faces),
                                pb.IMAGE_STATUS_FACES_FOUND), content, faces)
    return [face.face_id for face in faces]


def people(count: int, faces_each: int, seed: int = 0) -> list[np.ndarray]:
    """dlib-like embeddings of `count` people: their faces ~0.3 apart, people ~1 apart."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 0.09, (count, 128))
    return [centre + rng.normal(0, 0.015, 128) for centre in centres for _ in range(faces_each)]


def wait_for_clusters(stub, check):
    """ListFaceClusters once `check(response)` holds (the background computation caught up)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        response = stub.ListFaceClusters(query_pb2.ListFaceClustersRequest(sample_size=3))
        if not response.stale and check(response):
            return response
        assert time.monotonic() < deadline, f"suggested people never settled: {response}"
        time.sleep(0.1)


def cluster_sets(response) -> list[set[str]]:
    return [set(cluster.face_ids) for cluster in response.clusters]


# ---- suggested people ---------------------------------------------------
def test_unknown_faces_are_grouped_by_person_largest_first(stub, store, faces_dir, crop_jpegs):
    ids = add_faces(store, faces_dir, crop_jpegs, people(3, 4)[:10])  # groups of 4, 4 and 2
    expected = [set(ids[:4]), set(ids[4:8]), set(ids[8:10])]
    response = wait_for_clusters(stub, lambda r: len(r.clusters) == 3)
    assert sorted(cluster_sets(response), key=len, reverse=True) == cluster_sets(response)
    assert sorted(map(sorted, cluster_sets(response))) == sorted(map(sorted, expected))
    assert response.unknown_faces == 10 and response.clustered_faces == 10
    first = response.clusters[0]
    assert len(first.sample_faces) == 3 and first.sample_faces[0].face_id == first.face_ids[0]
    assert 0 < first.quality <= 1


def test_labelled_and_hidden_faces_leave_the_suggestions(stub, store, faces_dir, crop_jpegs):
    ids = add_faces(store, faces_dir, crop_jpegs, people(2, 4, seed=3))
    wait_for_clusters(stub, lambda r: len(r.clusters) == 2)
    penny = create(stub, "Penny")
    stub.BatchLabelFaces(query_pb2.BatchLabelFacesRequest(persona_id=penny.persona_id, labels=[
        query_pb2.BatchLabel(face_id=face_id, verdict=pb.VERDICT_BELONGS) for face_id in ids[:4]]))
    stub.SetFaceHidden(query_pb2.SetFaceHiddenRequest(face_id=ids[4], hidden=True))
    response = wait_for_clusters(stub, lambda r: r.unknown_faces == 3)
    assert cluster_sets(response) == [set(ids[5:8])]
    assert {face.face_id for face in stub.ListUnknownFaces(query_pb2.ListUnknownFacesRequest()).faces} == set(ids[5:])

    shown = stub.SetFaceHidden(query_pb2.SetFaceHiddenRequest(face_id=ids[4], hidden=False))  # reversible
    assert not shown.hidden
    assert cluster_sets(wait_for_clusters(stub, lambda r: r.unknown_faces == 4)) == [set(ids[4:8])]


def test_cluster_request_limits_are_invalid_argument(stub):
    error = rpc_error(stub.ListFaceClusters, query_pb2.ListFaceClustersRequest(sample_size=51))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "sample_size" in error.details()
    error = rpc_error(stub.ListFaceClusters, query_pb2.ListFaceClustersRequest(page_token="garbage"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


# ---- batch labels -----------------------------------------------------------
def test_batch_label_is_all_or_nothing(stub, store, faces_dir, crop_jpegs):
    ids = add_faces(store, faces_dir, crop_jpegs, people(1, 3, seed=5))
    amy = create(stub, "Amy")
    request = query_pb2.BatchLabelFacesRequest(persona_id=amy.persona_id, labels=[
        query_pb2.BatchLabel(face_id=face_id, verdict=pb.VERDICT_BELONGS) for face_id in [*ids, "no-such-face"]])
    error = rpc_error(stub.BatchLabelFaces, request)
    assert error.code() == grpc.StatusCode.NOT_FOUND and "no-such-face" in error.details()
    assert store.labels_of_persona(amy.persona_id, pb.VERDICT_BELONGS) == []

    del request.labels[-1]
    request.labels[-1].verdict = pb.VERDICT_NOT_BELONGS
    cursor = store.latest_cursor()
    response = stub.BatchLabelFaces(request)
    assert [face.face_id for face in response.faces] == ids
    assert {label.face_id for label in store.labels_of_persona(amy.persona_id, pb.VERDICT_BELONGS)} == set(ids[:2])
    assert [label.face_id for label in store.labels_of_persona(amy.persona_id, pb.VERDICT_NOT_BELONGS)] == [ids[2]]
    labelled = [event for event in store.read_events(cursor) if event.type == pb.EVENT_TYPE_FACE_LABELLED]
    assert len(labelled) == 3


@pytest.mark.parametrize("labels, reason", [
    ([], "labels is required"),
    ([("f", pb.VERDICT_BELONGS), ("f", pb.VERDICT_BELONGS)], "appears twice"),
    ([("f", pb.VERDICT_UNSPECIFIED)], "verdict"),
    ([("", pb.VERDICT_BELONGS)], "face_id"),
])
def test_bad_batches_are_invalid_argument(stub, labels, reason):
    persona = create(stub, "Howard")
    error = rpc_error(stub.BatchLabelFaces, query_pb2.BatchLabelFacesRequest(
        persona_id=persona.persona_id,
        labels=[query_pb2.BatchLabel(face_id=face_id, verdict=verdict) for face_id, verdict in labels]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and reason in error.details()


# ---- merge ----------------------------------------------------------------
def test_merge_moves_labels_and_deletes_the_sources(stub, store, faces_dir, crop_jpegs):
    ids = add_faces(store, faces_dir, crop_jpegs, people(1, 4, seed=7))
    keep, dup, other = create(stub, "Sheldon"), create(stub, "Shelly"), create(stub, "Dr Cooper")
    label(stub, ids[0], keep.persona_id)
    label(stub, ids[1], dup.persona_id)
    label(stub, ids[2], other.persona_id)
    label(stub, ids[3], dup.persona_id, pb.VERDICT_NOT_BELONGS)
    merged = stub.MergePersonas(query_pb2.MergePersonasRequest(
        persona_id=keep.persona_id, source_persona_ids=[dup.persona_id, other.persona_id]))
    assert merged.labelled_face_count == 3
    assert {l.face_id for l in store.labels_of_persona(keep.persona_id, pb.VERDICT_BELONGS)} == set(ids[:3])
    assert [l.face_id for l in store.labels_of_persona(keep.persona_id, pb.VERDICT_NOT_BELONGS)] == [ids[3]]
    assert [p.display_name for p in stub.ListPersonas(query_pb2.ListPersonasRequest()).personas] == ["Sheldon"]


def test_bad_merges_change_nothing(stub):
    keep = create(stub, "Raj")
    error = rpc_error(stub.MergePersonas, query_pb2.MergePersonasRequest(
        persona_id=keep.persona_id, source_persona_ids=[keep.persona_id]))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "itself" in error.details()
    error = rpc_error(stub.MergePersonas, query_pb2.MergePersonasRequest(
        persona_id=keep.persona_id, source_persona_ids=["gone"]))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "gone" in error.details()
    assert len(stub.ListPersonas(query_pb2.ListPersonasRequest()).personas) == 1


# ---- hide, search, names ------------------------------------------------
def test_hidden_persona_leaves_the_list_until_shown(stub):
    bernadette, stuart = create(stub, "Bernadette"), create(stub, "Stuart")
    hidden = stub.SetPersonaHidden(query_pb2.SetPersonaHiddenRequest(persona_id=stuart.persona_id, hidden=True))
    assert hidden.hidden
    names = lambda **kw: [p.display_name for p in stub.ListPersonas(query_pb2.ListPersonasRequest(**kw)).personas]
    assert names() == ["Bernadette"]
    assert names(include_hidden=True) == ["Bernadette", "Stuart"]
    stub.SetPersonaHidden(query_pb2.SetPersonaHiddenRequest(persona_id=stuart.persona_id, hidden=False))
    assert names() == ["Bernadette", "Stuart"]
    error = rpc_error(stub.SetPersonaHidden, query_pb2.SetPersonaHiddenRequest(persona_id="nobody", hidden=True))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert bernadette.persona_id


def test_search_personas_by_name_ignoring_case_and_accents(stub):
    for name in ["Zoë Washburne", "Leonard", "Penny", "zoe the second"]:
        create(stub, name)
    found = stub.ListPersonas(query_pb2.ListPersonasRequest(query="ZOE")).personas
    assert {p.display_name for p in found} == {"Zoë Washburne", "zoe the second"}
    assert stub.ListPersonas(query_pb2.ListPersonasRequest(query="nobody")).personas == []


def test_duplicate_names_are_already_exists_unless_forced(stub):
    penny = create(stub, "Penny")
    error = rpc_error(stub.CreatePersona, query_pb2.CreatePersonaRequest(persona=pb.Persona(display_name=" penny ")))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS and penny.persona_id in error.details()
    forced = stub.CreatePersona(query_pb2.CreatePersonaRequest(persona=pb.Persona(display_name="Penny"), force=True))
    amy = create(stub, "Amy")
    error = rpc_error(stub.UpdatePersona, query_pb2.UpdatePersonaRequest(
        persona=pb.Persona(persona_id=amy.persona_id, display_name="PENNY")))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert forced.persona_id != penny.persona_id
    assert sorted(p.display_name for p in stub.ListPersonas(query_pb2.ListPersonasRequest()).personas) == [
        "Amy", "Penny", "Penny"]


def test_renaming_a_persona_to_its_own_name_recased_is_allowed(stub):
    amy = create(stub, "amy")
    renamed = stub.UpdatePersona(query_pb2.UpdatePersonaRequest(
        persona=pb.Persona(persona_id=amy.persona_id, display_name="Amy")))
    assert renamed.display_name == "Amy"


@pytest.mark.parametrize("typed, stored", [
    ("  Leonard   Hofstadter ", "Leonard Hofstadter"),
    ("\u202eevil", "evil"),  # a right-to-left override would make it display as "live"
    ("Raj\u2066 Koothrappali\u2069", "Raj Koothrappali"),
    ("Zoe\u0308", "Zoë"),  # composed, so search and duplicates compare alike
])
def test_names_are_normalised(stub, typed, stored):
    assert create(stub, typed).display_name == stored


# ---- thumbnails ------------------------------------------------------------
def test_image_thumbnails_are_small_jpegs(stub, store, faces_dir, crop_jpegs):
    ids = add_faces(store, faces_dir, crop_jpegs, people(1, 1, seed=9))
    image_id = store.get_face(ids[0]).image_id
    original = stub.GetImageContent(query_pb2.GetImageContentRequest(image_id=image_id))
    thumbnail = stub.GetImageContent(query_pb2.GetImageContentRequest(image_id=image_id, size=160))
    assert thumbnail.content_type == "image/jpeg" and len(thumbnail.data) < len(original.data) / 4
    assert max(Image.open(io.BytesIO(thumbnail.data)).size) == 160
    again = stub.GetImageContent(query_pb2.GetImageContentRequest(image_id=image_id, size=160))
    assert again.data == thumbnail.data
    error = rpc_error(stub.GetImageContent, query_pb2.GetImageContentRequest(image_id=image_id, size=5000))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "size" in error.details()
    error = rpc_error(stub.GetImageContent, query_pb2.GetImageContentRequest(image_id="nope", size=160))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_suggestions_are_stale_while_they_are_being_computed(store, faces_dir, crop_jpegs, monkeypatch):
    """The first answer after a change is stale until the new groups are there: the computation
    clears its flag when it starts, and used to be reported fresh while it ran (issue 28: the
    Unknown page said "No suggestions" instead of "Looking for faces…")."""
    import threading

    from visage_query import clusters as suggested_people

    add_faces(store, faces_dir, crop_jpegs, people(2, 3, seed=11))
    running, release = threading.Event(), threading.Event()
    compute = suggested_people.clustering.clusters

    def slow_clusters(*args, **kwargs):
        running.set()
        release.wait(WAIT_SECONDS)
        return compute(*args, **kwargs)
    monkeypatch.setattr(suggested_people.clustering, "clusters", slow_clusters)
    suggested = suggested_people.SuggestedPeople(store, quiet_seconds=0).start()
    try:
        assert suggested.stale and not suggested.current().clusters  # asked: the computation starts
        assert running.wait(WAIT_SECONDS)
        assert suggested.stale and not suggested.result.clusters  # the old (empty) result, computing
        release.set()
        wait_until(lambda: not suggested.stale, "the computation ends")
        assert len(suggested.result.clusters) == 2
    finally:
        release.set()
        suggested.stop()
