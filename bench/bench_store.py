"""Store backends side by side: SQLite (baseline) vs Cassandra (the node from
`make cassandra-start`): faces written/s through put_image (ingest), embeddings
read/s through iter_embeddings (the trainer's read), and predictions written/s
through put_predictions in the classifier's batches (a first classification, then
a re-classification by a new version that replaces every face's prediction), and
through put_prediction_columns (the re-classification's own write): replacing
predictions written in face id order, and replacing ones first written in ingest
order (face ids arrive at random, as content hashes do), for N synthetic faces of
128 floats."""
from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from visage.config import CassandraConfig
from visage.store.base import Store
from visage.store.records import FaceRecord, ImageRecord, PredictionRecord
from visage.v1 import resources_pb2 as pb

FACES = int(os.environ.get("VISAGE_BENCH_STORE_FACES", "100000"))
FACES_PER_IMAGE = 4
WRITER_THREADS = 8  # like an ingest service writing from its request threads
CASSANDRA_PORT = int(os.environ.get("VISAGE_TEST_CASSANDRA_PORT", "9142"))
CROP = bytes(2048)  # a small face chip, as ingest stores one per face
# Per backend and phase: keeps `make bench` bounded.
WRITE_BUDGET_S = float(os.environ.get("VISAGE_BENCH_STORE_WRITE_S", "120"))
PREDICTION_BATCH = 8192  # the classifier's BATCH_ROWS
PERSONAS = [f"{i:016x}" for i in range(1, 11)] + [""]  # ten personas and "unknown"


def synthetic_images(count: int):
    rng = np.random.default_rng(0)
    for i in range(0, count, FACES_PER_IMAGE):
        image_id = f"{i:064x}"
        n = min(FACES_PER_IMAGE, count - i)
        faces = [FaceRecord(f"{image_id[-16:]}-{k}", image_id, k, (0, 0, 80, 80), [(1.0, 2.0)] * 5,
                            rng.standard_normal(128).astype(np.float32), CROP) for k in range(n)]
        yield ImageRecord(image_id, "bench.jpg", "image/jpeg", 640, 480, 4096, n,
                          pb.IMAGE_STATUS_FACES_FOUND), b"\xff" * 4096, faces


def measure(name: str, store: Store) -> dict:
    began = time.perf_counter()
    deadline = began + WRITE_BUDGET_S

    def write(item) -> int:
        if time.perf_counter() > deadline:
            return 0
        return len(item[2]) if store.put_image(*item) else 0

    with ThreadPoolExecutor(WRITER_THREADS) as pool, tqdm(total=FACES, desc=f"{name}: write", unit="face") as bar:
        written = 0
        for faces in pool.map(write, synthetic_images(FACES)):
            written += faces
            bar.update(faces)
    write_s = time.perf_counter() - began
    began = time.perf_counter()
    read = 0
    with tqdm(total=FACES, desc=f"{name}: read", unit="face") as bar:
        for ids, matrix in store.iter_embeddings():
            read += matrix.shape[0]
            bar.update(matrix.shape[0])
    read_s = time.perf_counter() - began
    assert read == written, f"{name}: read {read} of {written} faces"
    if written < FACES:
        print(f"{name}: wrote {written} of {FACES} faces in the {WRITE_BUDGET_S:.0f}s budget; "
              f"the training read time below is scaled to {FACES}")
    face_ids = [face_id for ids, _matrix in store.iter_embeddings() for face_id in ids]  # face id order
    first = write_predictions(name, store, face_ids, version=1)
    again = write_predictions(name, store, face_ids, version=2)
    columns = write_predictions(name, store, face_ids, version=3, as_columns=True)
    ingest_order = list(np.random.default_rng(4).permutation(face_ids))
    write_predictions(name, store, ingest_order, version=4, as_columns=True)
    after_ingest_order = write_predictions(name, store, face_ids, version=5, as_columns=True)
    return {"write": written / write_s, "read": read / read_s, "train_read_s": read_s * FACES / read,
            "predict_first": first, "predict_again": again, "predict_columns": columns,
            "predict_after_ingest_order": after_ingest_order}


def write_predictions(name: str, store: Store, face_ids: list[str], version: int, as_columns: bool = False) -> float:
    """Predictions written / s: one writer, the classifier's batch size, within the budget;
    as PredictionRecords (put_predictions) or as columns (put_prediction_columns). Checks
    afterwards that every face written carries this version."""
    rng = np.random.default_rng(version)
    personas = [PERSONAS[i] for i in rng.integers(0, len(PERSONAS), len(face_ids))]
    confidences = rng.random(len(face_ids)).astype(np.float32)
    began = time.perf_counter()
    written = 0
    with tqdm(total=len(face_ids), desc=f"{name}: predictions v{version}", unit="row") as bar:
        for start in range(0, len(face_ids), PREDICTION_BATCH):
            if time.perf_counter() - began > WRITE_BUDGET_S:
                break
            stop = min(start + PREDICTION_BATCH, len(face_ids))
            if as_columns:
                store.put_prediction_columns(face_ids[start:stop], personas[start:stop], confidences[start:stop],
                                             version, time.time())
            else:
                store.put_predictions([PredictionRecord(face_ids[i], personas[i], float(confidences[i]), version)
                                       for i in range(start, stop)])
            written += stop - start
            bar.update(stop - start)
    seconds = time.perf_counter() - began
    stored = sum(1 for p in store.iter_predictions() if p.model_version == version)
    assert stored == written, f"{name}: {stored} of {written} predictions carry version {version}"
    return written / seconds


def on_sqlite(measure: Callable[[str, Store], dict]) -> dict:
    """measure("sqlite", store) on a fresh SQLite store in a temporary directory."""
    from visage.store.sqlite import SqliteStore
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "bench.db")
        store.migrate()
        try:
            return measure("sqlite", store)
        finally:
            store.close()


def on_cassandra(measure: Callable[[str, Store], dict], keyspace: str) -> dict | None:
    """measure("cassandra", store) on a fresh keyspace of the project's Cassandra
    (dropped afterwards); None, saying why, when no node answers."""
    from visage.store.base import StoreError
    from visage.store.cassandra import CassandraStore
    config = CassandraConfig(contact_points=("127.0.0.1",), port=CASSANDRA_PORT, keyspace=keyspace)
    try:
        store = CassandraStore(config)
    except StoreError as e:
        print(f"cassandra: not measured ({e}); run `make cassandra-start`")
        return None
    store._session.execute(f"DROP KEYSPACE IF EXISTS {config.keyspace}", timeout=120)
    store.migrate()
    try:
        return measure("cassandra", store)
    finally:
        store._session.execute(f"DROP KEYSPACE IF EXISTS {config.keyspace}", timeout=120)
        store.close()


def main() -> None:
    sqlite, cassandra = on_sqlite(measure), on_cassandra(measure, "visage_bench_store")
    print(f"\nstore backends, {FACES} faces x 128 float32, {FACES_PER_IMAGE} faces/image, "
          f"{WRITER_THREADS} writer threads, {os.cpu_count()} cores")
    print(f"{'metric':<36}{'sqlite':>12}{'cassandra':>12}{'sqlite/cassandra':>18}")
    rows = [("faces written / s", "write", "{:.0f}"), ("embeddings read / s", "read", "{:.0f}"),
            ("read all embeddings for training (s)", "train_read_s", "{:.2f}"),
            ("predictions written / s (first)", "predict_first", "{:.0f}"),
            ("predictions written / s (replacing)", "predict_again", "{:.0f}"),
            ("  the same as columns", "predict_columns", "{:.0f}"),
            ("  columns, after ingest-order writes", "predict_after_ingest_order", "{:.0f}")]
    for label, key, fmt in rows:
        c = fmt.format(cassandra[key]) if cassandra else "n/a"
        ratio = f"{sqlite[key] / cassandra[key]:.2f}" if cassandra else "n/a"
        print(f"{label:<36}{fmt.format(sqlite[key]):>12}{c:>12}{ratio:>18}")
