"""Issue 29 on both stores, with the real shared photos: candidates per face (Classify,
ClassifyEmbeddings, ClassifyStream), VerifyFaces (face to face, face to persona) and
FindSimilarFaces (exact nearest stored faces, filters, paging, erasure)."""
from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from tests.classifier.conftest import SCENE_PEOPLE, activate_model
from visage.config import Config
from visage.faces.pool import PipelinePool
from visage.store.base import Store
from visage.store.records import FaceRecord, ImageRecord, LabelRecord
from visage.v1 import classify_pb2, classify_pb2_grpc
from visage.v1 import resources_pb2 as pb
from visage_classifier.server import start

PEOPLE_DIRS = ("bbt", "presidents")


@pytest.fixture(scope="module")
def shared_faces(pool: PipelinePool, faces_dir: Path) -> list[tuple[str, str, object]]:
    """(file, person or "" for a stranger, the found face) of every shared photo whose people
    are known: the bbt crops and presidents (one face each), the group scenes (left to right)
    and the strangers of noise/."""
    faces = []
    for folder in PEOPLE_DIRS:
        for person in sorted((faces_dir / folder).iterdir()):
            for photo in sorted(person.iterdir()):
                found = pool.analyze(photo.read_bytes()).faces
                assert len(found) == 1, photo
                faces.append((f"{folder}/{person.name}/{photo.name}", person.name, found[0]))
    for scene, people in SCENE_PEOPLE.items():
        found = sorted(pool.analyze((faces_dir / "scenes" / scene).read_bytes()).faces, key=lambda f: f.box[0])
        assert len(found) == len(people), scene
        faces += [(f"scenes/{scene}#{i}", person, face) for i, (person, face) in enumerate(zip(people, found))]
    for photo in sorted((faces_dir / "noise").iterdir()):
        faces += [(f"noise/{photo.name}#{i}", "", face) for i, face in enumerate(pool.analyze(photo.read_bytes()).faces)]
    return faces


@pytest.fixture(params=["sqlite", "cassandra"])
def any_store(request) -> Store:
    return request.getfixturevalue(f"{request.param}_store")


@pytest.fixture
def world(any_store: Store, shared_faces, config: Config, pool: PipelinePool):
    """The shared faces stored (one image per file), a persona per shared person, a model
    trained on the crops and presidents (the labelled ones), and a classifier on the store."""
    store = any_store
    personas = {name: store.create_persona(name).persona_id for name in sorted({p for _, p, _ in shared_faces if p})}
    face_ids, person_of = [], {}
    for i, (name, person, face) in enumerate(shared_faces):
        image_id = f"{i:04d}" + "0" * 60
        record = FaceRecord(f"{image_id}-0", image_id, 0, tuple(face.box), [], np.asarray(face.embedding, np.float32))
        store.put_image(ImageRecord(image_id, name.replace("/", "_"), "image/jpeg", 10, 10, 1, 1,
                                    pb.IMAGE_STATUS_FACES_FOUND), b"x", [record])
        face_ids.append(record.face_id)
        person_of[record.face_id] = person
    training = {}
    for face_id, (name, person, face) in zip(face_ids, shared_faces):
        if name.startswith(PEOPLE_DIRS):
            training.setdefault(personas[person], []).append(face.embedding)
            store.put_label(LabelRecord(face_id, personas[person], pb.VERDICT_BELONGS, "test"))
    version = activate_model(store, training)
    running = start(config, store, "127.0.0.1:0", pool=pool)
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    stub = classify_pb2_grpc.ClassifyServiceStub(channel)
    deadline = time.monotonic() + 20
    probe = classify_pb2.ClassifyEmbeddingsRequest(embeddings=[classify_pb2.Embedding(values=[0.0] * 128)])
    while stub.ClassifyEmbeddings(probe).model_version != version:  # the activation event is polled
        assert time.monotonic() < deadline, "the model was never served"
        time.sleep(0.05)
    yield dict(store=store, stub=stub, personas=personas, face_ids=face_ids, person_of=person_of, version=version)
    channel.close()
    running.stop(grace=0)


def test_candidates_are_ordered_and_agree_with_the_single_answer(world, faces_dir):
    stub, personas = world["stub"], world["personas"]
    names = {v: k for k, v in personas.items()}
    for scene, people in SCENE_PEOPLE.items():
        response = stub.Classify(classify_pb2.ClassifyRequest(content=(faces_dir / "scenes" / scene).read_bytes(),
                                                              max_candidates=3))
        faces = sorted(response.faces, key=lambda face: face.box.left)
        assert [face.display_name for face in faces] == people
        for face in faces:
            check_candidates(face, 3)
            assert names[face.candidates[0].persona_id] == face.display_name
    for photo in sorted((faces_dir / "noise").iterdir()):
        for face in stub.Classify(classify_pb2.ClassifyRequest(content=photo.read_bytes(), max_candidates=10)).faces:
            assert face.persona_id == ""
            check_candidates(face, 10)


def check_candidates(face, wanted: int) -> None:
    """Best first, distinct, the first one is the model's own answer (named, same confidence)."""
    candidates = list(face.candidates)
    assert len(candidates) == wanted
    assert len({c.persona_id for c in candidates}) == wanted
    confidences = [c.confidence for c in candidates]
    assert confidences == sorted(confidences, reverse=True)
    first = candidates[0]
    if face.persona_id:
        assert (first.persona_id, first.display_name, first.named, first.within_threshold) == \
            (face.persona_id, face.display_name, True, True)
        assert first.confidence == pytest.approx(face.confidence, abs=1e-4)
    else:  # unknown: its confidence is 1 - the similarity to the nearest persona
        assert not first.named and not first.within_threshold
        assert first.confidence == pytest.approx(1.0 - face.confidence, abs=1e-4)
    assert not any(c.named for c in candidates[1:])


def test_candidates_of_embeddings_and_streams_and_the_limit(world, shared_faces, faces_dir):
    stub = world["stub"]
    embeddings = [classify_pb2.Embedding(values=face.embedding.tolist()) for _, _, face in shared_faces]
    response = stub.ClassifyEmbeddings(classify_pb2.ClassifyEmbeddingsRequest(embeddings=embeddings,
                                                                              max_candidates=2))
    assert len(response.candidates) == len(embeddings)
    for prediction, listed in zip(response.predictions, response.candidates):
        assert len(listed.candidates) == 2
        assert listed.candidates[0].named == bool(prediction.persona_id)
        if prediction.persona_id:
            assert listed.candidates[0].persona_id == prediction.persona_id
    default = stub.ClassifyEmbeddings(classify_pb2.ClassifyEmbeddingsRequest(embeddings=embeddings[:3]))
    assert [len(c.candidates) for c in default.candidates] == [1, 1, 1]
    scene = (faces_dir / "scenes/bbt3.jpg").read_bytes()
    items = [classify_pb2.ClassifyStreamRequest(request_id="image", content=scene, max_candidates=4),
             classify_pb2.ClassifyStreamRequest(request_id="embedding", embedding=embeddings[0], max_candidates=4),
             classify_pb2.ClassifyStreamRequest(request_id="too-many", embedding=embeddings[0], max_candidates=11)]
    answers = {answer.request_id: answer for answer in stub.ClassifyStream(iter(items))}
    for face in list(answers["image"].faces) + list(answers["embedding"].faces):
        check_candidates(face, 4)
    assert answers["too-many"].error_code == "INVALID_ARGUMENT"
    for request in (classify_pb2.ClassifyRequest(content=scene, max_candidates=11),
                    classify_pb2.ClassifyEmbeddingsRequest(embeddings=embeddings[:1], max_candidates=-1)):
        method = stub.Classify if isinstance(request, classify_pb2.ClassifyRequest) else stub.ClassifyEmbeddings
        with pytest.raises(grpc.RpcError) as error:
            method(request)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_candidates" in error.value.details()


def test_verify_agrees_with_the_models_naming(world):
    stub, store, person_of, personas = world["stub"], world["store"], world["person_of"], world["personas"]
    people = [face_id for face_id in world["face_ids"] if person_of[face_id]]
    strangers = [face_id for face_id in world["face_ids"] if not person_of[face_id]]
    embeddings = store.get_faces(people)
    classified = stub.ClassifyEmbeddings(classify_pb2.ClassifyEmbeddingsRequest(
        embeddings=[classify_pb2.Embedding(values=f.embedding.tolist()) for f in embeddings]))
    names = {v: k for k, v in personas.items()}
    assert [names.get(p.persona_id, "") for p in classified.predictions] == [person_of[f.face_id] for f in embeddings]
    said_yes = {person: 0 for person in personas}
    for first, second in itertools.combinations(people, 2):
        answer = stub.VerifyFaces(classify_pb2.VerifyFacesRequest(
            face=classify_pb2.FaceInput(face_id=first), other_face=classify_pb2.FaceInput(face_id=second)))
        same = person_of[first] == person_of[second]
        assert answer.same_person == same, (first, second, person_of[first], person_of[second], answer)
        assert answer.basis == classify_pb2.VERIFY_BASIS_MODEL and answer.model_version == world["version"]
        assert answer.confidence == pytest.approx(1 - answer.distance / 1.2, abs=1e-5)
        said_yes[person_of[first]] += same
    assert all(said_yes.values()), said_yes  # every shared person has same-person pairs, all said yes
    for face_id in people + strangers:
        for person, persona_id in personas.items():
            answer = stub.VerifyFaces(classify_pb2.VerifyFacesRequest(
                face=classify_pb2.FaceInput(face_id=face_id), persona_id=persona_id))
            assert answer.same_person == (person_of[face_id] == person), (face_id, person, answer)
            assert answer.same_person == (answer.confidence >= answer.threshold - 1e-6)
            assert answer.basis == classify_pb2.VERIFY_BASIS_MODEL


def test_verify_images_and_thresholds(world, faces_dir):
    stub, personas = world["stub"], world["personas"]
    photo = {name: classify_pb2.FaceInput(content=(faces_dir / "presidents" / name).read_bytes())
             for name in ("obama/obama1.jpg", "obama/obama2.jpg", "biden/biden1.jpg")}
    same = stub.VerifyFaces(classify_pb2.VerifyFacesRequest(face=photo["obama/obama1.jpg"],
                                                            other_face=photo["obama/obama2.jpg"]))
    other = stub.VerifyFaces(classify_pb2.VerifyFacesRequest(face=photo["obama/obama1.jpg"],
                                                             other_face=photo["biden/biden1.jpg"]))
    assert same.same_person and not other.same_person
    # With a threshold given, the faces' distance decides.
    strict = stub.VerifyFaces(classify_pb2.VerifyFacesRequest(
        face=photo["obama/obama1.jpg"], other_face=photo["obama/obama2.jpg"], threshold=0.99))
    assert (strict.same_person, strict.basis, strict.threshold) == (False, classify_pb2.VERIFY_BASIS_DISTANCE,
                                                                   pytest.approx(0.99))
    assert stub.VerifyFaces(classify_pb2.VerifyFacesRequest(face=photo["biden/biden1.jpg"],
                                                            persona_id=personas["biden"])).same_person
    group = classify_pb2.FaceInput(content=(faces_dir / "scenes/bbt1.jpg").read_bytes())
    for request, words in [
        (classify_pb2.VerifyFacesRequest(face=group, persona_id=personas["raj"]), "exactly one"),
        (classify_pb2.VerifyFacesRequest(face=photo["obama/obama1.jpg"]), "other_face or persona_id"),
        (classify_pb2.VerifyFacesRequest(face=photo["obama/obama1.jpg"], persona_id="nobody"), "not found"),
        (classify_pb2.VerifyFacesRequest(face=classify_pb2.FaceInput(face_id="gone"), persona_id=personas["raj"]),
         "not found"),
    ]:
        with pytest.raises(grpc.RpcError) as error:
            stub.VerifyFaces(request)
        assert words in error.value.details()


def test_find_similar_returns_the_same_persons_faces(world, test_output_dir):
    stub, person_of = world["stub"], world["person_of"]
    precision = {}
    for face_id in world["face_ids"]:
        person = person_of[face_id]
        if not person:
            continue
        others = sum(1 for f, p in person_of.items() if p == person and f != face_id)
        k = min(5, others)
        found = stub.FindSimilarFaces(classify_pb2.FindSimilarFacesRequest(face_id=face_id, page_size=5)).faces
        assert len(found) == 5 and face_id not in [f.face_id for f in found]
        assert [f.distance for f in found] == sorted(f.distance for f in found)
        assert person_of[found[0].face_id] == person, (face_id, person)
        precision.setdefault(person, []).append(sum(person_of[f.face_id] == person for f in found[:k]) / k)
    per_person = {person: round(float(np.mean(values)), 3) for person, values in precision.items()}
    overall = float(np.mean([v for values in precision.values() for v in values]))
    report = {"precision_at_5": round(overall, 3), "per_person": per_person}
    (test_output_dir / f"find_similar_precision_{type(world['store']).__name__}.json").write_text(json.dumps(report))
    print("FindSimilarFaces precision@5 (of a person's other faces, at most 5):", report)
    assert overall >= 0.95, report
    assert min(per_person.values()) >= 0.8, report


def test_find_similar_filters_paging_and_erasure(world, faces_dir):
    stub, store, person_of, personas = world["stub"], world["store"], world["person_of"], world["personas"]
    sheldon_scene = next(f for f in world["face_ids"] if person_of[f] == "sheldon"
                         and not store.labels_of_face(f))
    labelled = {f for f in world["face_ids"] if store.labels_of_face(f)}

    def ask(**fields):
        return stub.FindSimilarFaces(classify_pb2.FindSimilarFacesRequest(face_id=sheldon_scene, **fields))

    everything = ask(page_size=100).faces
    assert len(everything) == len(world["face_ids"]) - 1
    pages, token = [], ""
    while True:
        page = ask(page_size=7, page_token=token)
        pages += page.faces
        token = page.next_page_token
        if not token:
            break
    assert [f.face_id for f in pages] == [f.face_id for f in everything]
    only_sheldon = ask(persona_id=personas["sheldon"], page_size=100).faces
    assert len(only_sheldon) == 5 and all(f.persona_id == personas["sheldon"] for f in only_sheldon)
    unlabelled = ask(unlabelled_only=True, page_size=100).faces
    assert {f.face_id for f in unlabelled} == set(world["face_ids"]) - labelled - {sheldon_scene}
    nearest = everything[0].face_id
    store.set_hidden("face", nearest, True)
    assert nearest not in [f.face_id for f in ask(exclude_hidden=True, page_size=100).faces]
    assert ask(page_size=1).faces[0].face_id == nearest  # hidden faces stay unless excluded
    store.delete_face(nearest)  # erasure: never answered again
    assert nearest not in [f.face_id for f in ask(page_size=100).faces]
    with pytest.raises(grpc.RpcError) as error:
        stub.FindSimilarFaces(classify_pb2.FindSimilarFacesRequest(face_id=nearest))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    # An image or an embedding as the query; a face stored after the index loaded is found.
    biden = (faces_dir / "presidents/biden/biden2.jpg").read_bytes()
    by_image = stub.FindSimilarFaces(classify_pb2.FindSimilarFacesRequest(content=biden, page_size=2)).faces
    assert [person_of[f.face_id] for f in by_image] == ["biden", "biden"]
    assert by_image[0].distance < 1e-3  # the stored face of the same photo
    query = store.get_face(by_image[1].face_id).embedding
    image_id = "f" * 64
    store.put_image(ImageRecord(image_id, "new.jpg", "image/jpeg", 10, 10, 1, 1, pb.IMAGE_STATUS_FACES_FOUND), b"x",
                    [FaceRecord(f"{image_id}-0", image_id, 0, (0, 0, 1, 1), [], np.asarray(query, np.float32))])
    by_embedding = stub.FindSimilarFaces(classify_pb2.FindSimilarFacesRequest(
        embedding=classify_pb2.Embedding(values=list(query)), page_size=2)).faces
    assert {f.face_id for f in by_embedding} == {by_image[1].face_id, f"{image_id}-0"}
    with pytest.raises(grpc.RpcError) as error:
        ask(page_token=ask(persona_id=personas["sheldon"], page_size=1).next_page_token)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
