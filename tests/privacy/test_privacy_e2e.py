"""Privacy end to end, over real channels on both stores: the real ingest, query,
trainer and classifier services in-process. After each erasure (an image, a
persona with its faces, one face) every read path shows nothing of the erased
data: Get*, List*, crops, contents, the event log replayed from the start, and
every stored model version (withdrawn ones cannot be activated; the ones that
can were trained on what remains). Ingest stores no metadata and no directory."""
from __future__ import annotations

import dataclasses
import io
import json
import time
import zipfile
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from visage.config import Config
from visage.mesh import start_in_process
from visage.model import Predictor
from visage.store.sqlite import SqliteStore
from visage.v1 import classify_pb2, classify_pb2_grpc, ingest_pb2, ingest_pb2_grpc, query_pb2, query_pb2_grpc
from visage.v1 import resources_pb2 as pb
from visage.v1 import train_pb2, train_pb2_grpc
from visage_trainer.training import TrainerSettings, read_label_set

WAIT_SECONDS = 180
PEOPLE = ("penny", "leonard", "sheldon")
GPS_FILENAME = "/home/alice/Pictures/Trip to Secret Street/penny-at-home.jpg"
GPS_SECRET = "Secret Street 221b"


@pytest.fixture(params=["sqlite", "cassandra"])
def store(request, config: Config):
    if request.param == "sqlite":
        store = SqliteStore(config.sqlite_path)
    else:
        from visage.store.cassandra import CassandraStore
        store = CassandraStore(request.getfixturevalue("cassandra_config"))
    store.migrate()
    yield store
    store.close()


@pytest.fixture
def mesh(config: Config, store):
    settings = TrainerSettings(debounce_seconds=0.5, poll_seconds=0.1)
    with start_in_process(dataclasses.replace(config, workers=1), store, trainer_settings=settings) as services:
        channels = {name: grpc.insecure_channel(f"127.0.0.1:{port}") for name, port in services.ports.items()}
        yield {"query": query_pb2_grpc.QueryServiceStub(channels["query"]),
               "ingest": ingest_pb2_grpc.IngestServiceStub(channels["ingest"]),
               "trainer": train_pb2_grpc.TrainServiceStub(channels["trainer"]),
               "classify": classify_pb2_grpc.ClassifyServiceStub(channels["classifier"]),
               "store": store}
        for channel in channels.values():
            channel.close()


def wait_until(condition, what: str, timeout: float = WAIT_SECONDS):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return result


def jpeg_with_gps(png: Path) -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "SpyCam"
    exif.get_ifd(0x8825).update({1: "N", 2: (51.0, 30.0, 12.5), 3: "W", 4: (0.0, 7.0, 39.0),
                                 0x1B: GPS_SECRET.encode()})
    buffer = io.BytesIO()
    Image.open(png).convert("RGB").save(buffer, "JPEG", exif=exif.tobytes(), quality=92)
    return buffer.getvalue()


def code_of(call) -> grpc.StatusCode | None:
    try:
        call()
    except grpc.RpcError as error:
        return error.code()
    return None


def active_version(trainer, label_count: int):
    try:
        active = trainer.GetActiveModelVersion(train_pb2.GetActiveModelVersionRequest())
    except grpc.RpcError:
        return None
    return active if active.lineage.label_count == label_count else None


def all_of(list_call, request_type, field: str, **kwargs) -> list:
    items, token = [], ""
    while True:
        response = list_call(request_type(page_size=100, page_token=token, **kwargs))
        items += getattr(response, field)
        if not (token := response.next_page_token):
            return items


def assert_nothing_of(mesh, image_ids: set[str], face_ids: set[str], persona_ids: set[str] = frozenset(),
                      secrets: tuple[str, ...] = ()) -> None:
    """Every read path of the query service and the event log from the start."""
    query, store = mesh["query"], mesh["store"]
    not_found = grpc.StatusCode.NOT_FOUND
    for image_id in image_ids:
        assert code_of(lambda: query.GetImage(query_pb2.GetImageRequest(image_id=image_id))) == not_found
        assert code_of(lambda: query.GetImageContent(query_pb2.GetImageContentRequest(image_id=image_id))) == not_found
        assert code_of(lambda: query.DeleteImage(query_pb2.DeleteImageRequest(image_id=image_id))) == not_found
    for face_id in face_ids:
        assert code_of(lambda: query.GetFace(query_pb2.GetFaceRequest(face_id=face_id))) == not_found
        assert code_of(lambda: query.GetFaceCrop(query_pb2.GetFaceCropRequest(face_id=face_id))) == not_found
    for persona_id in persona_ids:
        assert code_of(lambda: query.GetPersona(query_pb2.GetPersonaRequest(persona_id=persona_id))) == not_found
    images = all_of(query.ListImages, query_pb2.ListImagesRequest, "images")
    assert not image_ids & {image.image_id for image in images}
    personas = all_of(query.ListPersonas, query_pb2.ListPersonasRequest, "personas")
    assert not persona_ids & {persona.persona_id for persona in personas}
    listed_faces = {face.face_id for image in images
                    for face in query.GetImage(query_pb2.GetImageRequest(image_id=image.image_id)).faces}
    for persona in personas:
        for kind in (query_pb2.FACE_KIND_LABELLED, query_pb2.FACE_KIND_PREDICTED, query_pb2.FACE_KIND_REJECTED):
            listed_faces |= {face.face_id for face in all_of(query.ListPersonaFaces, query_pb2.ListPersonaFacesRequest,
                                                             "faces", persona_id=persona.persona_id, kind=kind)}
    unknown = query.ListUnknownFaces(query_pb2.ListUnknownFacesRequest(page_size=500))
    listed_faces |= {face.face_id for face in unknown.faces}
    assert not face_ids & listed_faces
    erased_ids = image_ids | face_ids | persona_ids
    tombstones = (pb.EVENT_TYPE_ERASED, pb.EVENT_TYPE_PERSONA_DELETED)
    for event in store.read_events("", 100_000):  # the whole log, replayed from its start
        values = [event.subject, *event.attributes.values()]
        if event.type not in tombstones:
            assert not erased_ids & set(values), event
        assert not any(secret in value for value in values for secret in secrets), event


def assert_versions_hold_nothing_erased(mesh, withdrawn: list[int], erased_persona_ids: set[str] = frozenset(),
                                        erased_embeddings: np.ndarray | None = None) -> None:
    """Withdrawn versions cannot serve; every version that can was trained on exactly the
    labels that remain (the centroid model is a function of them) and names no erased persona."""
    trainer, store = mesh["trainer"], mesh["store"]
    remaining = read_label_set(store).sha256
    versions = all_of(trainer.ListModelVersions, train_pb2.ListModelVersionsRequest, "model_versions")
    for version in versions:
        if version.version in withdrawn or version.state == pb.MODEL_STATE_WITHDRAWN:
            assert version.state == pb.MODEL_STATE_WITHDRAWN
            assert store.get_model_artifact(version.version) is None
            assert code_of(lambda: trainer.ActivateModelVersion(train_pb2.ActivateModelVersionRequest(
                version=version.version))) == grpc.StatusCode.FAILED_PRECONDITION
            continue
        if version.state in (pb.MODEL_STATE_ACTIVE, pb.MODEL_STATE_RETIRED, pb.MODEL_STATE_CANDIDATE):
            assert version.lineage.label_set_sha256 == remaining, version.version
        assert not erased_persona_ids & set(version.persona_ids)
        if erased_embeddings is not None:  # "classify with every stored version": none names the erased
            predictor = Predictor.load(store.get_model_version(version.version),
                                       store.get_model_artifact(version.version))
            named, _ = predictor.predict(erased_embeddings)
            assert not erased_persona_ids & set(named)


@pytest.mark.slow
def test_erasing_an_image_a_persona_and_a_face_leaves_nothing_of_them(mesh, faces_dir, tmp_path):
    query, ingest, trainer, classify, store = (mesh[k] for k in ("query", "ingest", "trainer", "classify", "store"))

    # ---- ingest: the GPS photo keeps neither its metadata nor its directory ------------
    photos = {person: sorted((faces_dir / "bbt" / person).glob("*.png"))[:4] for person in PEOPLE}
    gps_bytes = jpeg_with_gps(sorted((faces_dir / "bbt" / "penny").glob("*.png"))[4])
    gps = ingest.IngestImage(ingest_pb2.IngestImageRequest(content=gps_bytes, filename=GPS_FILENAME))
    assert gps.image.filename == "penny-at-home.jpg" and len(gps.faces) == 1
    served = query.GetImageContent(query_pb2.GetImageContentRequest(image_id=gps.image.image_id)).data
    assert GPS_SECRET.encode() not in served and b"SpyCam" not in served and b"Exif" not in served
    assert dict(Image.open(io.BytesIO(served)).getexif()) == {}
    assert query.GetImage(query_pb2.GetImageRequest(image_id=gps.image.image_id)).image.filename == "penny-at-home.jpg"
    assert store.get_image(gps.image.image_id).filename == "penny-at-home.jpg"
    assert GPS_SECRET.encode() not in store.get_image_content(gps.image.image_id)

    faces = {person: [ingest.IngestImage(ingest_pb2.IngestImageRequest(content=p.read_bytes(), filename=p.name))
                      for p in paths] for person, paths in photos.items()}
    faces["penny"].append(gps)
    personas = {person: query.CreatePersona(query_pb2.CreatePersonaRequest(
        persona=pb.Persona(display_name=person.title()))).persona_id for person in PEOPLE}
    for person, responses in faces.items():
        for response in responses:
            query.LabelFace(query_pb2.LabelFaceRequest(face_id=response.faces[0].face_id,
                                                       persona_id=personas[person], verdict=pb.VERDICT_BELONGS))
    first = wait_until(lambda: active_version(trainer, 13), "a version trained on 13 labels").version

    # ---- DeleteImage: the GPS photo ---------------------------------------------------
    erasure = query.DeleteImage(query_pb2.DeleteImageRequest(image_id=gps.image.image_id))
    assert list(erasure.image_ids) == [gps.image.image_id] and list(erasure.face_ids) == [gps.faces[0].face_id]
    assert first in erasure.withdrawn_versions
    second = wait_until(lambda: active_version(trainer, 12), "a version retrained on the 12 labels left").version
    assert_nothing_of(mesh, {gps.image.image_id}, {gps.faces[0].face_id},
                      secrets=(GPS_SECRET, "penny-at-home", "Pictures", "Penny", "Leonard", "Sheldon"))
    assert_versions_hold_nothing_erased(mesh, list(erasure.withdrawn_versions))
    assert second not in erasure.withdrawn_versions

    # ---- ExportPersona: Penny's subject-access zip ------------------------------------
    chunks = list(query.ExportPersona(query_pb2.ExportPersonaRequest(persona_id=personas["penny"])))
    assert chunks[-1].files_done == chunks[-1].files_total == 1 + 4 + 4
    archive = zipfile.ZipFile(io.BytesIO(b"".join(chunk.data for chunk in chunks)))
    summary = json.loads(archive.read("persona.json"))
    assert summary["display_name"] == "Penny" and len(summary["labels"]) == 4
    assert sorted(n for n in archive.namelist() if n.startswith("crops/")) == sorted(
        f"crops/{r.faces[0].face_id}.jpg" for r in faces["penny"][:4])
    assert sorted(n for n in archive.namelist() if n.startswith("images/")) == sorted(
        f"images/{r.image.image_id}.png" for r in faces["penny"][:4])

    # ---- DeletePersona erasing faces: Penny and her photos ------------------------------
    penny_embeddings = np.stack([store.get_face(r.faces[0].face_id).embedding for r in faces["penny"][:4]])
    query.DeletePersona(query_pb2.DeletePersonaRequest(persona_id=personas["penny"], erase_faces=True))
    third = wait_until(lambda: active_version(trainer, 8), "a version retrained without Penny").version
    penny_images = {r.image.image_id for r in faces["penny"][:4]}
    penny_faces = {r.faces[0].face_id for r in faces["penny"][:4]}
    assert_nothing_of(mesh, penny_images, penny_faces, {personas["penny"]}, secrets=("Penny",))
    assert_versions_hold_nothing_erased(mesh, [first, second], {personas["penny"]}, penny_embeddings)
    penny_photo = classify_pb2.ClassifyRequest(content=photos["penny"][0].read_bytes())
    classified = wait_until(lambda: (answer := classify.Classify(penny_photo)).model_version == third and answer,
                            f"the classifier serving version {third}")
    assert all(face.persona_id != personas["penny"] for face in classified.faces)
    assert code_of(lambda: query.ExportPersona(query_pb2.ExportPersonaRequest(
        persona_id=personas["penny"])).next()) == grpc.StatusCode.NOT_FOUND

    # ---- DeleteFace: one of Sheldon's faces; its image stays ----------------------------
    sheldon = faces["sheldon"][0]
    erasure = query.DeleteFace(query_pb2.DeleteFaceRequest(face_id=sheldon.faces[0].face_id))
    assert third in erasure.withdrawn_versions
    wait_until(lambda: active_version(trainer, 7), "a version retrained without that face")
    assert_nothing_of(mesh, set(), {sheldon.faces[0].face_id})
    kept = query.GetImage(query_pb2.GetImageRequest(image_id=sheldon.image.image_id))
    assert kept.image.face_count == 0 and list(kept.faces) == []
    assert_versions_hold_nothing_erased(mesh, [first, second, third])
    assert code_of(lambda: query.DeleteFace(query_pb2.DeleteFaceRequest(
        face_id=sheldon.faces[0].face_id))) == grpc.StatusCode.NOT_FOUND
