"""End to end over real channels: the real ingest, query, trainer and
classifier services in-process on one SQLite store. Photos go in, some faces
are labelled, the trainer activates a version, the classifier re-classifies
every unlabelled face with it (seen through the query service), and a
held-out group photo is named correctly by the Classify RPC."""
from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import grpc
import pytest

from visage.config import Config
from visage.mesh import start_in_process
from visage.v1 import classify_pb2, classify_pb2_grpc, ingest_pb2, ingest_pb2_grpc, query_pb2, query_pb2_grpc
from visage.v1 import resources_pb2 as pb
from visage.v1 import train_pb2, train_pb2_grpc
from visage_trainer.training import TrainerSettings

# Left to right, as checked against the crops' embeddings (see tests/classifier/conftest.py).
HELD_OUT_SCENE, HELD_OUT_PEOPLE = "bbt3.jpg", ["sheldon", "howard", "penny", "raj", "leonard"]
INGESTED_SCENES = {"bbt1.jpg": ["raj", "leonard", "howard", "sheldon"], "bbt2.jpg": ["leonard", "sheldon"]}
WAIT_SECONDS = 120


@pytest.fixture
def mesh(config: Config, sqlite_store):
    """Every service on a free port; yields their stubs."""
    settings = TrainerSettings(debounce_seconds=1.0, poll_seconds=0.1)
    with start_in_process(dataclasses.replace(config, workers=1), sqlite_store, trainer_settings=settings) as services:
        channels = {name: grpc.insecure_channel(f"127.0.0.1:{port}") for name, port in services.ports.items()}
        yield (query_pb2_grpc.QueryServiceStub(channels["query"]),
               ingest_pb2_grpc.IngestServiceStub(channels["ingest"]),
               train_pb2_grpc.TrainServiceStub(channels["trainer"]),
               classify_pb2_grpc.ClassifyServiceStub(channels["classifier"]))
        for channel in channels.values():
            channel.close()


def shared_photos(faces_dir: Path) -> list[Path]:
    """Everything except the held-out scene and the edge cases."""
    photos = sorted((faces_dir / "bbt").glob("*/*")) + sorted((faces_dir / "presidents").glob("*/*"))
    photos += [faces_dir / "scenes" / name for name in sorted(INGESTED_SCENES)] + sorted((faces_dir / "noise").iterdir())
    return photos


def wait_until(condition, what: str, timeout: float = WAIT_SECONDS):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return result


def collect(stream, into: list) -> None:
    try:
        into.extend(stream)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.CANCELLED  # the test ends the watch


def test_labels_train_a_version_that_names_every_unlabelled_face(mesh, faces_dir):
    query, ingest, trainer, classify = mesh
    watched: list[pb.Event] = []
    watch = query.WatchEvents(query_pb2.WatchEventsRequest(types=[
        pb.EVENT_TYPE_RECLASSIFY_PROGRESS, pb.EVENT_TYPE_PREDICTIONS_WRITTEN]))
    threading.Thread(target=collect, args=(watch, watched), daemon=True).start()

    # Ingest the shared photos.
    faces_by_photo: dict[Path, list[pb.Face]] = {}
    for photo in shared_photos(faces_dir):
        response = ingest.IngestImage(ingest_pb2.IngestImageRequest(content=photo.read_bytes(), filename=photo.name))
        faces_by_photo[photo] = list(response.faces)
    all_faces = [face for faces in faces_by_photo.values() for face in faces]
    assert len(all_faces) >= 40 + 5 + 6 + 7

    # Label every bbt crop with its person; everything else stays unlabelled.
    personas = {}
    labelled = set()
    for photo, faces in faces_by_photo.items():
        if photo.parent.parent.name != "bbt":
            continue
        name = photo.parent.name
        if name not in personas:
            personas[name] = query.CreatePersona(query_pb2.CreatePersonaRequest(
                persona=pb.Persona(display_name=name))).persona_id
        [face] = faces
        query.LabelFace(query_pb2.LabelFaceRequest(face_id=face.face_id, persona_id=personas[name],
                                                   verdict=pb.VERDICT_BELONGS))
        labelled.add(face.face_id)
    names = {persona_id: name for name, persona_id in personas.items()}

    # The trainer activates a version trained on all 40 labels...
    def active_on_all_labels():
        try:
            active = trainer.GetActiveModelVersion(train_pb2.GetActiveModelVersionRequest())
        except grpc.RpcError:
            return None
        return active if active.lineage.label_count == len(labelled) else None
    version = wait_until(active_on_all_labels, "a version trained on every label").version

    # ...and the classifier re-classifies with it: every unlabelled face has its prediction.
    def predicted_faces():
        faces = [query.GetFace(query_pb2.GetFaceRequest(face_id=face.face_id)) for face in all_faces]
        unlabelled = [face for face in faces if face.face_id not in labelled]
        done = all(face.HasField("prediction") and face.prediction.model_version == version for face in unlabelled)
        return faces if done else None
    faces = {face.face_id: face for face in wait_until(predicted_faces, f"predictions of version {version}")}
    for face_id in labelled:
        assert not faces[face_id].HasField("prediction"), "a labelled face shows a prediction"
    for scene, people in INGESTED_SCENES.items():
        scene_faces = sorted((faces[f.face_id] for f in faces_by_photo[faces_dir / "scenes" / scene]),
                             key=lambda face: face.box.left)
        predicted = [names.get(face.prediction.persona_id, "unknown") for face in scene_faces]
        assert all(got in (want, "unknown") for got, want in zip(predicted, people)), (scene, predicted)
        assert sum(got == want for got, want in zip(predicted, people)) >= len(people) - 1, (scene, predicted)
    for photo in sorted((faces_dir / "noise").iterdir()):
        for face in faces_by_photo[photo]:
            assert faces[face.face_id].prediction.persona_id == "", f"stranger {photo.name} named"

    # Live UIs saw the run through WatchEvents.
    wait_until(lambda: any(e.type == pb.EVENT_TYPE_PREDICTIONS_WRITTEN and e.subject == str(version)
                           for e in watched), "PREDICTIONS_WRITTEN through WatchEvents", timeout=10)
    progress = [e for e in watched if e.type == pb.EVENT_TYPE_RECLASSIFY_PROGRESS
                and e.attributes["model_version"] == str(version)]
    assert progress[-1].attributes["state"] == "RECLASSIFY_STATE_SUCCEEDED"
    watch.cancel()

    # The held-out group photo, classified by the Classify RPC.
    response = classify.Classify(classify_pb2.ClassifyRequest(
        content=(faces_dir / "scenes" / HELD_OUT_SCENE).read_bytes()))
    assert response.model_version == version
    got = [face.display_name if face.persona_id else "unknown"
           for face in sorted(response.faces, key=lambda face: face.box.left)]
    assert len(got) == len(HELD_OUT_PEOPLE)
    assert all(name in (want, "unknown") for name, want in zip(got, HELD_OUT_PEOPLE)), got
    assert sum(name == want for name, want in zip(got, HELD_OUT_PEOPLE)) >= len(HELD_OUT_PEOPLE) - 1, got
