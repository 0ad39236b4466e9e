"""FindSimilarFaces and VerifyFaces (issue 29), over real channels to a real classifier:
1. FindSimilarFaces p50/p95 (a stored face id, top 10) at 100k and 1M synthetic faces in
   SQLite (BENCH_SIMILAR_FACES, default "100000,1000000"), with its method: an exact scan of
   the embeddings held in memory (loaded once, kept current from the event log), against
   the baseline a store-only service would have: a numpy scan over Store.iter_embeddings
   per query (measured in-process, a few queries).
2. VerifyFaces p50 (two stored faces; a face and a persona; two images) vs Classify p50
   (one image), on the shared photos.
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import numpy as np

from bench.bench_classifier import FACES_DIR, activate_version, fill_faces
from visage.auth import client as auth_client
from visage.config import Config
from visage.faces.pool import PipelinePool
from visage.store.records import FaceRecord, ImageRecord
from visage.store.sqlite import SqliteStore
from visage.v1 import classify_pb2, classify_pb2_grpc
from visage.v1 import resources_pb2 as pb
from visage_classifier.server import start

SIZES = [int(n) for n in os.environ.get("BENCH_SIMILAR_FACES", "100000,1000000").split(",") if n]
PERSONAS = 1000
QUERIES = 200
BASELINE_QUERIES = 3
ROUNDS = 5


def ms(samples: list[float], q: float) -> float:
    return float(np.percentile(samples, q)) * 1000


def find_similar_numbers(count: int) -> dict:
    rng = np.random.default_rng(count)
    with tempfile.TemporaryDirectory(prefix="visage-bench-similar-") as tmp:
        store = SqliteStore(Path(tmp) / "visage.db")
        store.migrate()
        centres = rng.normal(0, 0.09, (PERSONAS, 128)).astype(np.float32)
        persona_ids = [store.create_persona(f"person {i}").persona_id for i in range(PERSONAS)]
        activate_version(store, centres, persona_ids)
        started = time.perf_counter()
        fill_faces(store, centres, count, rng)
        fill_seconds = time.perf_counter() - started
        face_ids = [face_id for ids, _ in store.iter_embeddings(65536) for face_id in ids]
        running = start(Config(data_dir=Path(tmp), workers=1), store, "127.0.0.1:0", watch_events=False)
        try:
            with auth_client.channel(f"127.0.0.1:{running.port}") as channel:
                stub = classify_pb2_grpc.ClassifyServiceStub(channel)
                started = time.perf_counter()
                first = stub.FindSimilarFaces(classify_pb2.FindSimilarFacesRequest(face_id=face_ids[0]))
                load_seconds = time.perf_counter() - started
                assert len(first.faces) == 10
                samples = []
                for face_id in rng.choice(face_ids, QUERIES, replace=False):
                    started = time.perf_counter()
                    answer = stub.FindSimilarFaces(classify_pb2.FindSimilarFacesRequest(face_id=str(face_id)))
                    samples.append(time.perf_counter() - started)
                    assert len(answer.faces) == 10
        finally:
            running.stop(grace=0)
        # The same exact scan without the projection's pruning, in-process on the same matrix
        # (what the load-average of this machine makes of a plain pass over every embedding).
        matrix = np.concatenate([m for _, m in store.iter_embeddings(65536)])
        norms = np.einsum("ij,ij->i", matrix, matrix)
        full = []
        for row in rng.choice(len(matrix), 20, replace=False):
            started = time.perf_counter()
            q = matrix[row]
            d2 = norms - 2.0 * (matrix @ q) + float(q @ q)
            np.argpartition(d2, 10)[:11]
            full.append(time.perf_counter() - started)
        del matrix, norms
        baseline = []
        for face_id in face_ids[:BASELINE_QUERIES]:
            started = time.perf_counter()
            query = store.get_face(face_id).embedding
            best: list[tuple[float, str]] = []
            for ids, matrix in store.iter_embeddings(65536):
                d2 = ((matrix - query) ** 2).sum(axis=1)
                top = np.argpartition(d2, 10)[:11]
                best = sorted(best + [(float(d2[i]), ids[i]) for i in top])[:11]
            baseline.append(time.perf_counter() - started)
        store.close()
    return {"faces": count, "fill": fill_seconds, "load": load_seconds, "p50": ms(samples, 50),
            "p95": ms(samples, 95), "baseline_p50": ms(baseline, 50), "full_p50": ms(full, 50)}


def verify_numbers() -> dict:
    with tempfile.TemporaryDirectory(prefix="visage-bench-verify-") as tmp:
        store = SqliteStore(Path(tmp) / "visage.db")
        store.migrate()
        pool = PipelinePool(Config(data_dir=Path(tmp), workers=1))
        embeddings, face_ids, personas = {}, {}, {}
        for person in sorted((FACES_DIR / "bbt").iterdir()):
            personas[person.name] = store.create_persona(person.name).persona_id
            for crop in sorted(person.iterdir()):
                [face] = pool.analyze(crop.read_bytes()).faces
                image_id = uuid.uuid4().hex
                record = FaceRecord(f"{image_id}-0", image_id, 0, tuple(face.box), [], face.embedding)
                store.put_image(ImageRecord(image_id, crop.name, "image/png", 1, 1, 1, 1,
                                            pb.IMAGE_STATUS_FACES_FOUND), b"", [record])
                embeddings.setdefault(personas[person.name], []).append(face.embedding)
                face_ids.setdefault(person.name, []).append(record.face_id)
        centres = np.stack([np.mean(rows, axis=0) for rows in embeddings.values()]).astype(np.float32)
        activate_version(store, centres, list(embeddings))
        running = start(Config(data_dir=Path(tmp), workers=1), store, "127.0.0.1:0", pool=pool)
        scene = (FACES_DIR / "scenes/bbt1.jpg").read_bytes()
        obama = [(FACES_DIR / "presidents/obama" / n).read_bytes() for n in ("obama1.jpg", "obama2.jpg")]
        calls = {
            "Verify face ids": classify_pb2.VerifyFacesRequest(
                face=classify_pb2.FaceInput(face_id=face_ids["raj"][0]),
                other_face=classify_pb2.FaceInput(face_id=face_ids["raj"][1])),
            "Verify face id + persona": classify_pb2.VerifyFacesRequest(
                face=classify_pb2.FaceInput(face_id=face_ids["raj"][0]), persona_id=personas["raj"]),
            "Verify two images": classify_pb2.VerifyFacesRequest(
                face=classify_pb2.FaceInput(content=obama[0]), other_face=classify_pb2.FaceInput(content=obama[1])),
        }
        numbers = {}
        try:
            with auth_client.channel(f"127.0.0.1:{running.port}", options=[
                    ("grpc.max_send_message_length", 64 << 20)]) as channel:
                stub = classify_pb2_grpc.ClassifyServiceStub(channel)
                for name, request in calls.items():
                    stub.VerifyFaces(request)  # warm
                    samples = []
                    for _ in range(ROUNDS * 4):
                        started = time.perf_counter()
                        stub.VerifyFaces(request)
                        samples.append(time.perf_counter() - started)
                    numbers[name] = statistics.median(samples) * 1000
                stub.Classify(classify_pb2.ClassifyRequest(content=scene))
                samples = []
                for _ in range(ROUNDS * 4):
                    started = time.perf_counter()
                    stub.Classify(classify_pb2.ClassifyRequest(content=scene, max_candidates=3))
                    samples.append(time.perf_counter() - started)
                numbers["Classify (bbt1.jpg, 4 faces, 3 candidates)"] = statistics.median(samples) * 1000
        finally:
            running.stop(grace=0)
            pool.close()
            store.close()
    return numbers


def main() -> None:
    print("FindSimilarFaces (stored face id, top 10; SQLite; exact scan of the in-memory embeddings)")
    print(f"{'faces':>9} {'fill s':>8} {'load s':>7} {'p50 ms':>8} {'p95 ms':>8} {'full scan p50 ms':>17} "
          f"{'baseline p50 ms':>16} {'speed-up':>9}")
    for count in SIZES:
        n = find_similar_numbers(count)
        print(f"{n['faces']:>9} {n['fill']:>8.1f} {n['load']:>7.2f} {n['p50']:>8.2f} {n['p95']:>8.2f} "
              f"{n['full_p50']:>17.2f} {n['baseline_p50']:>16.1f} {n['baseline_p50'] / n['p50']:>8.0f}x", flush=True)
    print("  p50/p95: the RPC (exact: projection-pruned scan of the in-memory embeddings, then the page read back "
          "from the store)\n  load: the first query (every embedding read into memory); full scan: the same exact "
          "scan unpruned, in-process, no RPC;\n  baseline: a numpy scan over Store.iter_embeddings per query, "
          "in-process (speed-up: baseline / p50)")
    numbers = verify_numbers()
    classify = next(v for k, v in numbers.items() if k.startswith("Classify"))
    print("\nVerifyFaces vs Classify (p50 over a real channel, shared photos)")
    for name, value in numbers.items():
        print(f"  {name:<46} {value:>8.2f} ms  ({value / classify:.2f} x Classify)")


if __name__ == "__main__":
    main()
