"""Classifier benchmarks, each against the baseline issue #5 names, measured in
the same run:
1. Classify RPC latency (p50/p99) vs the bare in-process pipeline + predictor
   on the same photos (target: RPC overhead <= 5 %).
2. Re-classification faces/s from SQLite (and Cassandra if the node of
   `make cassandra-start` answers) vs in-process sklearn predict_proba on the
   same embeddings (target: >= 100k faces/s from SQLite). Split into the
   store read, the ONNX predict and the store write, to show where time goes.
3. ClassifyStream throughput (embeddings and images) vs unary calls.
"""
from __future__ import annotations

import os
import socket
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import numpy as np

from visage.auth import client as auth_client
from visage.config import CassandraConfig, Config
from visage.faces.pipeline import FacePipeline
from visage.faces.pool import PipelinePool
from visage.model import OpenSetCentroidClassifier, distance_to_confidence, export_onnx
from visage.store.base import Store
from visage.store.records import FaceRecord, ImageRecord, ModelVersionRecord
from visage.store.sqlite import SqliteStore
from visage.v1 import classify_pb2, classify_pb2_grpc
from visage.v1 import resources_pb2 as pb
from visage_classifier.models import ActiveModel, predict
from visage_classifier.reclassify import Reclassifier, follow
from visage_classifier.server import start

FACES_DIR = Path(os.environ.get("VISAGE_FACES_DIR", Path(__file__).resolve().parents[2] / "shared/data/faces"))
if not (FACES_DIR / "bbt").is_dir():
    FACES_DIR = Path("/work/shared/data/faces")
SQLITE_FACES = int(os.environ.get("BENCH_CLASSIFIER_FACES", "200000"))
CASSANDRA_FACES = 20000
PERSONAS = 50
ROUNDS = 5  # each photo is classified this many times per side
CASSANDRA_PORT = int(os.environ.get("VISAGE_TEST_CASSANDRA_PORT", "9142"))


def percentile(samples: list[float], q: float) -> float:
    return float(np.percentile(samples, q)) * 1000  # ms


def synthetic_model(store: Store, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """PERSONAS personas and an active version; returns their centres and ids (row i is persona i)."""
    centres = rng.normal(0, 0.09, (PERSONAS, 128)).astype(np.float32)
    persona_ids = [store.create_persona(f"person {i}").persona_id for i in range(PERSONAS)]
    activate_version(store, centres, persona_ids)
    return centres, persona_ids


def activate_version(store: Store, centres: np.ndarray, persona_ids: list[str]) -> int:
    """A new active version of the centroid model (as the trainer activates after a label)."""
    estimator = OpenSetCentroidClassifier(0.5).fit(centres, persona_ids)
    record = ModelVersionRecord(0, pb.MODEL_STATE_CANDIDATE, "bench", persona_ids=estimator.classes_,
                                unknown_threshold=float(distance_to_confidence(0.5)), metrics={}, lineage={})
    return store.activate_model_version(store.put_model_version(record, export_onnx(estimator)).version).version


def fill_faces(store: Store, centres: np.ndarray, count: int, rng: np.random.Generator,
               per_image: int = 5000) -> np.ndarray:
    rows = (centres[rng.integers(0, len(centres), count)] + rng.normal(0, 0.02, (count, 128))).astype(np.float32)
    for start_row in range(0, count, per_image):
        image_id = uuid.uuid4().hex
        chunk = rows[start_row:start_row + per_image]
        faces = [FaceRecord(f"{image_id}-{i:05d}", image_id, i, (0, 0, 1, 1), [], row) for i, row in enumerate(chunk)]
        store.put_image(ImageRecord(image_id, "bench", "image/jpeg", 1, 1, 1, len(faces),
                                    pb.IMAGE_STATUS_FACES_FOUND), b"", faces)
    return rows


def timed_run(reclassifier: Reclassifier) -> tuple[float, int]:
    started = time.perf_counter()
    final = list(follow(reclassifier.start_or_join(), lambda: True))[-1]
    assert final.state == classify_pb2.RECLASSIFY_STATE_SUCCEEDED, final.message
    return time.perf_counter() - started, final.done


def sklearn_baseline(rows: np.ndarray, centres: np.ndarray) -> float:
    """Rows/s of in-process sklearn predict_proba (logistic regression on the same personas)."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    labels = rng.integers(0, len(centres), 5000)
    train = centres[labels] + rng.normal(0, 0.02, (5000, 128))
    model = LogisticRegression(max_iter=200).fit(train, labels)
    started = time.perf_counter()
    for start_row in range(0, len(rows), 8192):
        model.predict_proba(rows[start_row:start_row + 8192])
    return len(rows) / (time.perf_counter() - started)


def reclassify_numbers(store: Store, count: int) -> dict:
    rng = np.random.default_rng(0)
    centres, persona_ids = synthetic_model(store, rng)
    rows = fill_faces(store, centres, count, rng)
    models = ActiveModel(store)
    models.refresh()
    reclassifier = Reclassifier(store, models)
    first_seconds, done = timed_run(reclassifier)  # every face new: inserts
    # After a label: a new version (its centres moved a little, as a retrain moves them)
    # evaluates every face again and writes the verdicts that change (changed-only writes).
    version = activate_version(store, centres + rng.normal(0, 0.005, centres.shape).astype(np.float32), persona_ids)
    again_seconds, again_done = timed_run(reclassifier)
    rewritten = sum(1 for p in store.iter_predictions() if p.model_version == version)
    assert again_done == done == count and rewritten <= count, (done, again_done, rewritten, count)
    predictor = models.current()
    started = time.perf_counter()
    batches = [(ids, matrix) for ids, matrix in store.iter_embeddings(8192)]
    read_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for _, matrix in batches:
        predict(predictor, matrix)
    predict_seconds = time.perf_counter() - started
    return {"faces": done, "first": done / first_seconds, "again": done / again_seconds, "rewritten": rewritten,
            "read": count / read_seconds, "predict": count / predict_seconds,
            "sklearn": sklearn_baseline(rows, centres)}


def cassandra_store() -> Store | None:
    try:
        socket.create_connection(("127.0.0.1", CASSANDRA_PORT), timeout=2).close()
    except OSError:
        return None
    from visage.store.cassandra import CassandraStore

    store = CassandraStore(CassandraConfig(contact_points=("127.0.0.1",), port=CASSANDRA_PORT,
                                           keyspace=f"visage_bench_classifier_{uuid.uuid4().hex[:8]}"))
    store.migrate()
    return store


def print_reclassify(data_dir: Path) -> None:
    sqlite = SqliteStore(data_dir / "reclassify.db")
    sqlite.migrate()
    results = {"sqlite": reclassify_numbers(sqlite, SQLITE_FACES)}
    sqlite.close()
    cassandra = None
    try:
        cassandra = cassandra_store()
        if cassandra is not None:
            results["cassandra"] = reclassify_numbers(cassandra, CASSANDRA_FACES)
    except Exception as error:  # a bench must still print the SQLite numbers
        print(f"cassandra: not measured ({error})")
    finally:
        if cassandra is not None:
            cassandra._session.execute(f"DROP KEYSPACE IF EXISTS {cassandra.keyspace}", timeout=120)
            cassandra.close()
    print(f"\nRe-classification (target >= 100,000 faces/s from SQLite)")
    print(f"{'store':<10}{'faces':>9}{'first run/s':>13}{'re-run/s':>11}{'re-run wrote':>14}{'read/s':>12}"
          f"{'onnx/s':>12}{'sklearn p_p/s':>15}{'re-run/sklearn':>16}")
    for name, r in results.items():
        print(f"{name:<10}{r['faces']:>9,}{r['first']:>13,.0f}{r['again']:>11,.0f}{r['rewritten']:>14,}"
              f"{r['read']:>12,.0f}{r['predict']:>12,.0f}{r['sklearn']:>15,.0f}{r['again'] / r['sklearn']:>16.2f}")
    print("(first run writes new predictions; the re-run, by a newly activated version as after a label, "
          "evaluates every face and writes only the verdicts that change: 're-run wrote' of 'faces')")


def photos() -> list[bytes]:
    paths = sorted((FACES_DIR / "scenes").iterdir()) + sorted((FACES_DIR / "presidents").glob("*/*"))
    return [path.read_bytes() for path in paths]



def time_analyze_and_predict(analyze, predictor, images: list[bytes]) -> list[float]:
    """Seconds per photo of analysis + prediction in this process, ROUNDS times over."""
    seconds = []
    for _ in range(ROUNDS):
        for content in images:
            started = time.perf_counter()
            faces = analyze(content).faces
            predict(predictor, np.stack([f.embedding for f in faces]) if faces else np.zeros((0, 128), np.float32))
            seconds.append(time.perf_counter() - started)
    return seconds


def print_latency_and_stream(data_dir: Path) -> None:
    config = Config(data_dir=data_dir, workers=1)
    store = SqliteStore(data_dir / "rpc.db")
    store.migrate()
    synthetic_model(store, np.random.default_rng(2))
    images = photos()
    pipeline = FacePipeline(config)
    models = ActiveModel(store)
    predictor = models.refresh()
    bare = time_analyze_and_predict(pipeline.analyze, predictor, images)
    pool = PipelinePool(config)
    pooled = time_analyze_and_predict(pool.analyze, predictor, images)
    running = start(config, store, "127.0.0.1:0", pool=pool, watch_events=False)
    with auth_client.channel(f"127.0.0.1:{running.port}") as channel:
        stub = classify_pb2_grpc.ClassifyServiceStub(channel)
        for content in images:  # warm-up
            stub.Classify(classify_pb2.ClassifyRequest(content=content))
        rpc = []
        for _ in range(ROUNDS):
            for content in images:
                started = time.perf_counter()
                stub.Classify(classify_pb2.ClassifyRequest(content=content))
                rpc.append(time.perf_counter() - started)
        stream = stream_numbers(stub, images)
    running.stop(grace=0)
    pool.close()
    store.close()
    p50_bare, p50_rpc = percentile(bare, 50), percentile(rpc, 50)
    print(f"\nClassify latency on {len(images)} photos x {ROUNDS} (target: RPC overhead <= 5 %)")
    print(f"{'':<28}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}")
    print(f"{'bare pipeline + predict':<28}{p50_bare:>10.1f}{percentile(bare, 99):>10.1f}"
          f"{statistics.mean(bare) * 1000:>10.1f}")
    print(f"{'PipelinePool + predict':<28}{percentile(pooled, 50):>10.1f}{percentile(pooled, 99):>10.1f}"
          f"{statistics.mean(pooled) * 1000:>10.1f}")
    print(f"{'Classify RPC':<28}{p50_rpc:>10.1f}{percentile(rpc, 99):>10.1f}{statistics.mean(rpc) * 1000:>10.1f}")
    print(f"RPC overhead at p50: {(p50_rpc / p50_bare - 1) * 100:+.1f} % vs bare pipeline "
          f"({(p50_rpc / percentile(pooled, 50) - 1) * 100:+.1f} % vs the same PipelinePool in-process: "
          f"the rest is the pool's process hop)")
    print(f"\nClassifyStream throughput")
    print(f"{'items':<30}{'stream/s':>12}{'unary/s':>12}{'stream/unary':>14}")
    for name, (streamed, unary) in stream.items():
        print(f"{name:<30}{streamed:>12,.1f}{unary:>12,.1f}{streamed / unary:>14.2f}")


def stream_numbers(stub, images: list[bytes]) -> dict:
    rng = np.random.default_rng(3)
    embeddings = [classify_pb2.Embedding(values=row.tolist()) for row in rng.normal(0, 0.09, (3000, 128))]
    items = [classify_pb2.ClassifyStreamRequest(request_id=str(i), embedding=e) for i, e in enumerate(embeddings)]
    started = time.perf_counter()
    answered = sum(1 for _ in stub.ClassifyStream(iter(items)))
    streamed = answered / (time.perf_counter() - started)
    started = time.perf_counter()
    for embedding in embeddings[:1000]:
        stub.ClassifyEmbeddings(classify_pb2.ClassifyEmbeddingsRequest(embeddings=[embedding]))
    unary = 1000 / (time.perf_counter() - started)
    image_items = [classify_pb2.ClassifyStreamRequest(request_id=str(i), content=c)
                   for i, c in enumerate(images * 2)]
    started = time.perf_counter()
    answered_images = sum(1 for _ in stub.ClassifyStream(iter(image_items)))
    streamed_images = answered_images / (time.perf_counter() - started)
    started = time.perf_counter()
    for item in image_items:
        stub.Classify(classify_pb2.ClassifyRequest(content=item.content))
    unary_images = len(image_items) / (time.perf_counter() - started)
    return {"embeddings (1 per item)": (streamed, unary), "photos (1 pipeline worker)": (streamed_images, unary_images)}


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-classifier-") as tmp:
        print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.1f} (other work skews every number)")
        print_latency_and_stream(Path(tmp))
        print_reclassify(Path(tmp))


if __name__ == "__main__":
    main()
