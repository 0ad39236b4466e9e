"""FindSimilarFaces and VerifyFaces (issue 29), over real channels to a real classifier:
1. FindSimilarFaces p50/p95 (a stored face id, top 10) at 100k and 1M synthetic faces in
   SQLite (BENCH_SIMILAR_FACES, default "100000,1000000"), with its method: an exact scan of
   the embeddings held in memory (loaded once, kept current from the event log), against
   the baseline a store-only service would have: a numpy scan over Store.iter_embeddings
   per query (measured in-process, a few queries).
2. VerifyFaces p50 (two stored faces; a face and a persona; two images) vs Classify p50
   (one image), on the shared photos.
Each store is filled once (fill s and load s, the first query's reading every embedding into
memory, are single runs: they happen once); then BENCH_ROUNDS rounds (bench.rounds), the
sides in turn (order reversed every other round): min / median / max of each round's figure.
"""
from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from bench.bench_classifier import FACES_DIR, activate_version, fill_faces
from bench.rounds import ROUNDS, alternating, by_figure, load_average, p50_ms, ratios, spread
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
QUERIES = 100  # RPCs a round (their p50 / p95 are the round's figures)
FULL_SCANS = 20  # in-process unpruned scans a round (their p50)
CALLS = 8  # VerifyFaces / Classify calls a round (their p50)


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
        # The same exact scan without the projection's pruning, in-process on the same matrix
        # (what the load-average of this machine makes of a plain pass over every embedding).
        matrix = np.concatenate([m for _, m in store.iter_embeddings(65536)])
        norms = np.einsum("ij,ij->i", matrix, matrix)
        running = start(Config(data_dir=Path(tmp), workers=1), store, "127.0.0.1:0", watch_events=False)
        try:
            with auth_client.channel(f"127.0.0.1:{running.port}") as channel:
                stub = classify_pb2_grpc.ClassifyServiceStub(channel)
                started = time.perf_counter()
                first = stub.FindSimilarFaces(classify_pb2.FindSimilarFacesRequest(face_id=face_ids[0]))
                load_seconds = time.perf_counter() - started
                assert len(first.faces) == 10
                figures = alternating({"rpc": lambda: rpc_figures(stub, rng.choice(face_ids, QUERIES, replace=False)),
                                       "full": lambda: full_scan_p50(matrix, norms, rng),
                                       "baseline": lambda: store_scan_ms(store, str(rng.choice(face_ids)))})
        finally:
            running.stop(grace=0)
            store.close()
    return {"faces": count, "fill": fill_seconds, "load": load_seconds, **by_figure(figures["rpc"]),
            "baseline": figures["baseline"], "full": figures["full"]}


def rpc_figures(stub, face_ids) -> dict[str, float]:
    """p50 and p95 ms of FindSimilarFaces for each of these faces, one after another."""
    samples = []
    for face_id in face_ids:
        started = time.perf_counter()
        answer = stub.FindSimilarFaces(classify_pb2.FindSimilarFacesRequest(face_id=str(face_id)))
        samples.append(time.perf_counter() - started)
        assert len(answer.faces) == 10
    return {"p50": ms(samples, 50), "p95": ms(samples, 95)}


def full_scan_p50(matrix: np.ndarray, norms: np.ndarray, rng) -> float:
    """p50 ms of FULL_SCANS unpruned exact scans of the in-memory matrix, in-process."""
    samples = []
    for row in rng.choice(len(matrix), FULL_SCANS, replace=False):
        started = time.perf_counter()
        q = matrix[row]
        d2 = norms - 2.0 * (matrix @ q) + float(q @ q)
        np.argpartition(d2, 10)[:11]
        samples.append(time.perf_counter() - started)
    return ms(samples, 50)


def store_scan_ms(store: SqliteStore, face_id: str) -> float:
    """The baseline: one query answered by a numpy scan over Store.iter_embeddings, in ms."""
    started = time.perf_counter()
    query = store.get_face(face_id).embedding
    best: list[tuple[float, str]] = []
    for ids, matrix in store.iter_embeddings(65536):
        d2 = ((matrix - query) ** 2).sum(axis=1)
        top = np.argpartition(d2, 10)[:11]
        best = sorted(best + [(float(d2[i]), ids[i]) for i in top])[:11]
    return (time.perf_counter() - started) * 1000


CLASSIFY = "Classify (bbt1.jpg, 4 faces, 3 candidates)"


def verify_numbers() -> dict[str, list[float]]:
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
        try:
            with auth_client.channel(f"127.0.0.1:{running.port}", options=[
                    ("grpc.max_send_message_length", 64 << 20)]) as channel:
                stub = classify_pb2_grpc.ClassifyServiceStub(channel)
                sides = {name: (lambda request=request: stub.VerifyFaces(request)) for name, request in calls.items()}
                sides[CLASSIFY] = lambda: stub.Classify(classify_pb2.ClassifyRequest(content=scene, max_candidates=3))
                for call in sides.values():
                    call()  # warm
                numbers = alternating({name: lambda call=call: p50_ms(call, CALLS) for name, call in sides.items()})
        finally:
            running.stop(grace=0)
            pool.close()
            store.close()
    return numbers


def main() -> None:
    print(f"FindSimilarFaces (stored face id, top 10; SQLite; exact scan of the in-memory embeddings); ms, min / "
          f"median / max of {ROUNDS} rounds, RPC, full scan and baseline alternating; {load_average()}")
    print(f"{'faces':>9} {'fill s':>7} {'load s':>7} {'p50 ms':>20} {'p95 ms':>20} {'full scan p50 ms':>20} "
          f"{'baseline ms':>26} {'speed-up':>18}")
    for count in SIZES:
        n = find_similar_numbers(count)
        print(f"{n['faces']:>9} {n['fill']:>7.1f} {n['load']:>7.2f} {spread(n['p50']):>20} {spread(n['p95']):>20} "
              f"{spread(n['full']):>20} {spread(n['baseline'], 1):>26} "
              f"{spread(ratios(n['baseline'], n['p50']), 0):>17}x", flush=True)
    print(f"  p50/p95: of {QUERIES} RPCs a round (exact: projection-pruned scan of the in-memory embeddings, then the "
          "page read back from the store)\n  fill, load: single runs (the store is filled once; load: the first "
          f"query, every embedding read into memory); full scan: p50 of {FULL_SCANS} of the same exact scan "
          "unpruned, in-process, no RPC;\n  baseline: one query a round by a numpy scan over Store.iter_embeddings, "
          "in-process (speed-up: baseline / p50, per round)")
    numbers = verify_numbers()
    classify = numbers[CLASSIFY]
    print(f"\nVerifyFaces vs Classify (p50 of {CALLS} calls over a real channel, shared photos; min / median / max of "
          f"{ROUNDS} rounds, the calls alternating; {load_average()})")
    for name, values in numbers.items():
        print(f"  {name:<46} {spread(values):>26} ms  ({spread(ratios(values, classify), 3)} x Classify)")


if __name__ == "__main__":
    main()
