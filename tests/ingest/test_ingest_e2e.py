"""End to end over a real gRPC channel into a real SQLite store, with the
shared face photos."""
from __future__ import annotations

import threading

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.ingest.conftest import OVER_DEFAULT_LIMIT, bomb_png, truncated
from visage.v1 import ingest_pb2
from visage.v1 import resources_pb2 as pb


def stream(stub, paths, faces_dir) -> ingest_pb2.IngestImagesResponse:
    return stub.IngestImages(ingest_pb2.IngestImagesRequest(
        content=path.read_bytes(), filename=str(path.relative_to(faces_dir))) for path in paths)


def outcome_name(result) -> str:
    return ingest_pb2.IngestOutcome.Name(result.outcome)


def test_each_bbt_crop_yields_exactly_one_stored_face(ingest_server, faces_dir):
    stub, store, _ = ingest_server
    crops = sorted(faces_dir.glob("bbt/*/*.png"))
    summary = stream(stub, crops, faces_dir)
    assert [(r.filename, r.face_count) for r in summary.results] == \
        [(path.name, 1) for path in crops]  # the name only: directories are never stored
    assert (summary.images, summary.faces, summary.failures) == (40, 40, 0)
    assert (store.count_images(), store.count_faces()) == (40, 40)


def test_group_photos_and_edge_images(ingest_server, faces_dir):
    stub, store, _ = ingest_server
    scenes = sorted(faces_dir.glob("scenes/*.jpg"))
    edge = sorted(faces_dir.glob("edge/*"))
    summary = stream(stub, scenes + edge, faces_dir)
    counts = {r.filename: r.face_count for r in summary.results}
    assert all(counts[path.name] >= 2 for path in scenes), counts
    assert all(counts[path.name] == 1 for path in edge), counts
    for result in summary.results:
        image = store.get_image(result.image_id)
        assert image.face_count == result.face_count == len(store.faces_of_image(result.image_id))
        assert image.status == pb.IMAGE_STATUS_FACES_FOUND


def test_reingesting_everything_adds_nothing(ingest_server, faces_dir):
    stub, store, _ = ingest_server
    paths = sorted(faces_dir.glob("scenes/*.jpg")) + sorted(faces_dir.glob("noise/*.jpg"))
    first = stream(stub, paths, faces_dir)
    before = (store.count_images(), store.count_faces(), len(store.read_events("")))

    again = stream(stub, paths, faces_dir)

    assert first.duplicates == 0 and again.duplicates == len(paths) and again.faces == 0
    assert [r.image_id for r in again.results] == [r.image_id for r in first.results]
    assert (store.count_images(), store.count_faces(), len(store.read_events(""))) == before


def test_concurrent_clients_with_overlapping_images_store_each_once(ingest_server, faces_dir):
    stub, store, _ = ingest_server
    paths = sorted(faces_dir.glob("noise/*.jpg")) + sorted(faces_dir.glob("bbt/*/*1.png"))  # 15 images
    clients = 8
    answers: list[ingest_pb2.IngestImagesResponse] = [None] * clients

    def client(index: int) -> None:
        rotated = paths[index * 2:] + paths[:index * 2]  # every client sends every image, in its own order
        answers[index] = stream(stub, rotated[:10], faces_dir)

    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    results = [result for answer in answers for result in answer.results]
    assert len(results) == clients * 10 and all(outcome_name(r) != "INGEST_OUTCOME_FAILED" for r in results)
    sent = {r.image_id for r in results}
    newly_stored = [r.image_id for r in results if outcome_name(r) == "INGEST_OUTCOME_INGESTED"]
    assert sorted(newly_stored) == sorted(sent)  # each image ingested by exactly one client
    assert store.count_images() == len(sent) == len(paths)
    assert store.count_faces() == sum(len(store.faces_of_image(image_id)) for image_id in sent) == len(paths)
    ingested_events = [e for e in store.read_events("") if e.type == pb.EVENT_TYPE_IMAGE_INGESTED]
    assert sorted(e.subject for e in ingested_events) == sorted(sent)


def test_hostile_inputs_fail_only_themselves_and_the_service_keeps_serving(ingest_server, faces_dir):
    stub, store, port = ingest_server
    good = faces_dir / "presidents" / "obama" / "obama-480p.jpg"
    bad = [b"", truncated(faces_dir / "scenes" / "bbt1.jpg"), b"\x89PNG\r\n\x1a\n" + b"\0" * 50,
           bomb_png(), OVER_DEFAULT_LIMIT]
    requests = [ingest_pb2.IngestImagesRequest(content=content, filename=f"bad{index}")
                for index, content in enumerate(bad)]
    requests.append(ingest_pb2.IngestImagesRequest(content=good.read_bytes(), filename="good"))
    summary = stub.IngestImages(iter(requests))

    assert [r.error_code for r in summary.results] == ["INVALID_ARGUMENT"] * 4 + ["RESOURCE_EXHAUSTED", ""]
    assert all(r.error_message for r in summary.results[:5])
    assert summary.results[5].face_count == 1 and store.count_images() == 1
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
