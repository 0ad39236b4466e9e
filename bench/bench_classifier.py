"""Classifier benchmarks, each against the baseline issue #5 names, measured in
the same run:
1. Classify RPC latency (p50/p99) vs the bare in-process pipeline + predictor
   on the same photos (target: RPC overhead <= 5 %), the sides alternating over
   BENCH_ROUNDS rounds.
2. Re-classification faces/s from SQLite (and Cassandra if the node of
   `make cassandra-start` answers) vs in-process sklearn predict_proba on the
   same embeddings (target: >= 100k faces/s from SQLite), at each number of faces
   of BENCH_CLASSIFIER_FACES (SQLite) and BENCH_CLASSIFIER_CASSANDRA_FACES: the
   scale curve of build/bench/reclassify.json (bench.report). The re-run and the
   baseline alternate over BENCH_ROUNDS rounds (bench.rounds). Split into the
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
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np

from bench.report import save_figures
from bench.rounds import ROUNDS, alternating, load_average, spread
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
SQLITE_FACES = [int(n) for n in os.environ.get("BENCH_CLASSIFIER_FACES", "10000,50000,200000").split(",")]
CASSANDRA_FACES = [int(n) for n in os.environ.get("BENCH_CLASSIFIER_CASSANDRA_FACES", "10000,20000,50000").split(",")]
PERSONAS = 50
PASSES = 2  # each photo is classified this many times per side in each round
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


def sklearn_baseline(centres: np.ndarray):
    """In-process sklearn predict_proba (logistic regression on the same personas): the baseline."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    labels = rng.integers(0, len(centres), 5000)
    train = centres[labels] + rng.normal(0, 0.02, (5000, 128))
    return LogisticRegression(max_iter=200).fit(train, labels)


def sklearn_rate(model, rows: np.ndarray) -> float:
    """Rows/s of the baseline's predict_proba over every row."""
    started = time.perf_counter()
    for start_row in range(0, len(rows), 8192):
        model.predict_proba(rows[start_row:start_row + 8192])
    return len(rows) / (time.perf_counter() - started)


def reclassify_numbers(store: Store, count: int) -> dict:
    """One store holding `count` faces: the first run once, then ROUNDS re-runs (each by a newly
    activated version, as after a label) alternating with the sklearn baseline."""
    rng = np.random.default_rng(0)
    centres, persona_ids = synthetic_model(store, rng)
    rows = fill_faces(store, centres, count, rng)
    models = ActiveModel(store)
    models.refresh()
    reclassifier = Reclassifier(store, models)
    first_seconds, done = timed_run(reclassifier)  # every face new: inserts
    assert done == count, (done, count)
    baseline = sklearn_baseline(centres)
    rewritten = []

    def rerun() -> float:
        # A new version (its centres moved a little, as a retrain moves them) evaluates every
        # face again and writes the verdicts that change (changed-only writes).
        moved = centres + rng.normal(0, 0.005, centres.shape).astype(np.float32)
        version = activate_version(store, moved, persona_ids)
        seconds, again_done = timed_run(reclassifier)
        rewritten.append(sum(1 for p in store.iter_predictions() if p.model_version == version))
        assert again_done == count and rewritten[-1] <= count, (again_done, rewritten[-1], count)
        return count / seconds

    rates = alternating({"again": rerun, "sklearn": lambda: sklearn_rate(baseline, rows)})
    predictor = models.current()
    started = time.perf_counter()
    batches = [(ids, matrix) for ids, matrix in store.iter_embeddings(8192)]
    read_seconds = time.perf_counter() - started
    started = time.perf_counter()
    for _, matrix in batches:
        predict(predictor, matrix)
    predict_seconds = time.perf_counter() - started
    return {"faces": count, "first": count / first_seconds, "again": rates["again"], "sklearn": rates["sklearn"],
            "rewritten": rewritten, "read": count / read_seconds, "predict": count / predict_seconds,
            "load_average": os.getloadavg()[0]}


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


def sqlite_curve(data_dir: Path) -> list[dict]:
    curve = []
    for count in SQLITE_FACES:
        store = SqliteStore(data_dir / f"reclassify-{count}.db")
        store.migrate()
        try:
            curve.append(reclassify_numbers(store, count))
        finally:
            store.close()
            (data_dir / f"reclassify-{count}.db").unlink()
        print_row("sqlite", curve[-1])
    return curve


def cassandra_curve() -> list[dict]:
    """Empty when no node answers (`make bench` starts one); a keyspace per size, dropped after."""
    curve = []
    for count in CASSANDRA_FACES:
        store = cassandra_store()
        if store is None:
            print(f"cassandra: not measured (no node on 127.0.0.1:{CASSANDRA_PORT}: make cassandra-start)")
            return curve
        try:
            curve.append(reclassify_numbers(store, count))
        finally:
            store._session.execute(f"DROP KEYSPACE IF EXISTS {store.keyspace}", timeout=120)
            store.close()
        print_row("cassandra", curve[-1])
    return curve


def print_row(name: str, r: dict) -> None:
    ratio = statistics.median(r["again"]) / statistics.median(r["sklearn"])
    print(f"{name:<10}{r['faces']:>9,}{r['first']:>12,.0f}  {spread(r['again'], 0):>27}  "
          f"{statistics.median(r['sklearn']):>11,.0f}{ratio:>8.2f}{max(r['rewritten']):>9,}{r['read']:>11,.0f}"
          f"{r['predict']:>11,.0f}{r['load_average']:>6.1f}", flush=True)


def print_reclassify(data_dir: Path) -> None:
    print(f"\nRe-classification (target >= 100,000 faces/s from SQLite); {ROUNDS} rounds, re-run and "
          f"sklearn alternating; {load_average()}")
    print(f"{'store':<10}{'faces':>9}{'first/s':>12}  {'re-run/s min / median / max':>27}  {'sklearn/s':>11}"
          f"{'ratio':>8}{'wrote':>9}{'read/s':>11}{'onnx/s':>11}{'load':>6}", flush=True)
    results = {"sqlite": sqlite_curve(data_dir)}
    try:
        results["cassandra"] = cassandra_curve()
    except Exception as error:  # a bench must still report the SQLite numbers
        print(f"cassandra: not measured ({error})")
    print("(first run writes new predictions; each re-run, by a newly activated version as after a label, "
          "evaluates every face and writes only the verdicts that change: 'wrote', the most of any round; "
          "ratio: medians, re-run / in-process sklearn predict_proba; sklearn/s: median)")
    save_figures("reclassify", {"rounds": ROUNDS, "stores": results})


def photos() -> list[bytes]:
    paths = sorted((FACES_DIR / "scenes").iterdir()) + sorted((FACES_DIR / "presidents").glob("*/*"))
    return [path.read_bytes() for path in paths]



def time_analyze_and_predict(analyze, predictor, images: list[bytes]) -> list[float]:
    """Seconds per photo of analysis + prediction in this process, PASSES times over."""
    seconds = []
    for _ in range(PASSES):
        for content in images:
            started = time.perf_counter()
            faces = analyze(content).faces
            predict(predictor, np.stack([f.embedding for f in faces]) if faces else np.zeros((0, 128), np.float32))
            seconds.append(time.perf_counter() - started)
    return seconds


def time_rpc(stub, images: list[bytes]) -> list[float]:
    """Seconds per Classify RPC, PASSES times over."""
    seconds = []
    for _ in range(PASSES):
        for content in images:
            started = time.perf_counter()
            stub.Classify(classify_pb2.ClassifyRequest(content=content))
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
    pool = PipelinePool(config)
    running = start(config, store, "127.0.0.1:0", pool=pool, watch_events=False)
    samples: dict[str, list[float]] = {"bare": [], "pooled": [], "rpc": []}
    with auth_client.channel(f"127.0.0.1:{running.port}") as channel:
        stub = classify_pb2_grpc.ClassifyServiceStub(channel)
        for content in images:  # warm-up
            stub.Classify(classify_pb2.ClassifyRequest(content=content))

        def side(name: str, measure: Callable[[], list[float]]) -> Callable[[], float]:
            def p50() -> float:  # one round of one side: its p50; every sample kept for p99 and mean
                seconds = measure()
                samples[name] += seconds
                return percentile(seconds, 50)
            return p50

        p50s = alternating({"bare": side("bare", lambda: time_analyze_and_predict(pipeline.analyze, predictor, images)),
                            "pooled": side("pooled", lambda: time_analyze_and_predict(pool.analyze, predictor, images)),
                            "rpc": side("rpc", lambda: time_rpc(stub, images))})
        stream = stream_numbers(stub, images)
    running.stop(grace=0)
    pool.close()
    store.close()
    print(f"\nClassify latency on {len(images)} photos x {PASSES} a round, {ROUNDS} rounds, sides alternating "
          f"(target: RPC overhead <= 5 %); {load_average()}")
    print(f"{'':<28}{'p50 ms min / median / max':>28}{'p99 ms':>10}{'mean ms':>10}")
    for name, label in (("bare", "bare pipeline + predict"), ("pooled", "PipelinePool + predict"),
                        ("rpc", "Classify RPC")):
        print(f"{label:<28}{spread(p50s[name], 1):>28}{percentile(samples[name], 99):>10.1f}"
              f"{statistics.mean(samples[name]) * 1000:>10.1f}")
    overhead = [(rpc / bare - 1) * 100 for rpc, bare in zip(p50s["rpc"], p50s["bare"])]
    pooled = [(rpc / pool - 1) * 100 for rpc, pool in zip(p50s["rpc"], p50s["pooled"])]
    print(f"RPC overhead at p50, min / median / max of rounds: {spread(overhead, 1)} % vs bare pipeline "
          f"({spread(pooled, 1)} % vs the same PipelinePool in-process: the rest is the pool's process hop)")
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
