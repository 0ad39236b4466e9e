"""Store backends side by side: SQLite (baseline) vs Cassandra (the node from
`make cassandra-start`): faces written/s through put_image (ingest), embeddings
read/s through iter_embeddings (the trainer's read), and predictions written/s
through put_predictions in the classifier's batches (a first classification, then
a re-classification by a new version that replaces every face's prediction), and
through put_prediction_columns (the re-classification's own write): replacing
predictions written in face id order, and replacing ones first written in ingest
order (face ids arrive at random, as content hashes do), for N synthetic faces of
128 floats.

`python -m bench store --nodes 3` instead: writes/s and reads/s on the single node vs a
3-node cluster with replication factor 3 (main_nodes below)."""
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
    if NODES > 1:
        main_nodes(NODES)
        return
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


# ---- one node vs a cluster (`python -m bench store --nodes 3`) --------------------------
# The same store calls on the single node (`make cassandra-start`, replication factor 1) and
# on the N-node cluster of scripts/cassandra.py (127.0.0.1..N, replication factor N; started
# here unless it runs, and then stopped again), both at the store's consistency (LOCAL_QUORUM,
# LOCAL_SERIAL for conditional writes). Every node of the cluster shares this machine's cores,
# so this measures what replication costs (N copies of every write, quorum round trips), not
# what more machines would add.
NODES = int(os.environ.get("VISAGE_BENCH_STORE_NODES", "1"))
NODES_FACES = int(os.environ.get("VISAGE_BENCH_STORE_NODES_FACES", "20000"))
NODES_LABELS = int(os.environ.get("VISAGE_BENCH_STORE_NODES_LABELS", "2000"))
READ_BATCH = 100  # face ids per get_faces call (the query service's page of faces)
CLUSTER_PORT = int(os.environ.get("VISAGE_TEST_CASSANDRA_CLUSTER_PORT", "9242"))
REPO = Path(__file__).resolve().parent.parent


def measure_replicated(name: str, store: Store) -> dict:
    """Faces written / s (put_image), embeddings read / s (the trainer's scan), faces read / s by
    id (get_faces, READ_BATCH a call) and labels written / s (put_label: a conditional write),
    WRITER_THREADS callers each."""
    from visage.store.records import LabelRecord

    began = time.perf_counter()
    deadline = began + WRITE_BUDGET_S

    def write(item) -> list[str]:
        if time.perf_counter() > deadline:
            return []
        store.put_image(*item)
        return [f.face_id for f in item[2]]

    face_ids: list[str] = []
    with ThreadPoolExecutor(WRITER_THREADS) as pool, \
            tqdm(total=NODES_FACES, desc=f"{name}: write", unit="face") as bar:
        for written in pool.map(write, synthetic_images(NODES_FACES)):
            face_ids.extend(written)
            bar.update(len(written))
    write_s = time.perf_counter() - began

    began = time.perf_counter()
    scanned = sum(matrix.shape[0] for _ids, matrix in store.iter_embeddings())
    scan_s = time.perf_counter() - began
    assert scanned == len(face_ids), f"{name}: scanned {scanned} of {len(face_ids)} faces"

    shuffled = list(np.random.default_rng(1).permutation(face_ids))
    batches = [shuffled[i:i + READ_BATCH] for i in range(0, len(shuffled), READ_BATCH)]
    began = time.perf_counter()
    with ThreadPoolExecutor(WRITER_THREADS) as pool:
        read = sum(len(faces) for faces in pool.map(store.get_faces, batches))
    read_s = time.perf_counter() - began
    assert read == len(face_ids), f"{name}: read {read} of {len(face_ids)} faces by id"

    personas = [store.create_persona(f"bench {i}").persona_id for i in range(10)]
    labels = [LabelRecord(face_id, personas[i % len(personas)], pb.VERDICT_BELONGS)
              for i, face_id in enumerate(shuffled[:NODES_LABELS])]
    began = time.perf_counter()
    with ThreadPoolExecutor(WRITER_THREADS) as pool, \
            tqdm(total=len(labels), desc=f"{name}: label", unit="label") as bar:
        for _ in pool.map(store.put_label, labels):
            bar.update(1)
    label_s = time.perf_counter() - began
    return {"write": len(face_ids) / write_s, "scan": scanned / scan_s, "read": read / read_s,
            "label": len(labels) / label_s, "faces": len(face_ids)}


def on_config(measure: Callable[[str, Store], dict], name: str, config: CassandraConfig) -> dict | None:
    """measure(name, store) on a fresh keyspace of `config` (dropped afterwards); None, saying
    why, when nothing answers."""
    from visage.store.base import StoreError
    from visage.store.cassandra import CassandraStore
    try:
        store = CassandraStore(config)
    except StoreError as e:
        print(f"{name}: not measured ({e})")
        return None
    store._session.execute(f"DROP KEYSPACE IF EXISTS {config.keyspace}", timeout=120)
    store.migrate()
    try:
        return measure(name, store)
    finally:
        store._session.execute(f"DROP KEYSPACE IF EXISTS {config.keyspace}", timeout=120)
        store.close()


def on_cluster(nodes: int, measure: Callable[[str, Store], dict]) -> dict | None:
    """measure() on the `nodes`-node cluster, started (and stopped again) unless it runs. Takes
    the cluster's lock, as tests/store/test_three_nodes.py does: one user at a time."""
    import fcntl
    import subprocess
    import sys

    script = [sys.executable, str(REPO / "scripts/cassandra.py")]
    lock_path = REPO / "build/cassandra-cluster/in-use.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        running = subprocess.run([*script, "status", "--cluster", str(nodes)], capture_output=True).returncode == 0
        if not running and subprocess.run([*script, "start", "--cluster", str(nodes), "--fresh"]).returncode != 0:
            print(f"{nodes} nodes: not measured (the cluster did not start)")
            return None
        try:
            config = CassandraConfig(contact_points=tuple(f"127.0.0.{i}" for i in range(1, nodes + 1)),
                                     port=CLUSTER_PORT, keyspace="visage_bench_store_nodes",
                                     replication=f"{{'class': 'SimpleStrategy', 'replication_factor': {nodes}}}",
                                     connect_timeout_seconds=120)
            return on_config(measure, f"{nodes} nodes", config)
        finally:
            if not running:
                subprocess.run([*script, "stop", "--cluster", str(nodes)])


def main_nodes(nodes: int) -> None:
    one = on_config(measure_replicated, "1 node",
                    CassandraConfig(contact_points=("127.0.0.1",), port=CASSANDRA_PORT,
                                    keyspace="visage_bench_store_nodes", connect_timeout_seconds=120))
    if one is None:
        print("1 node: run `make cassandra-start`")
    many = on_cluster(nodes, measure_replicated)
    print(f"\nstore on 1 node (replication factor 1) vs {nodes} nodes (replication factor {nodes}), all on this "
          f"machine's {os.cpu_count()} cores: {NODES_FACES} faces x 128 float32, {FACES_PER_IMAGE} faces/image, "
          f"{NODES_LABELS} labels, {WRITER_THREADS} caller threads, LOCAL_QUORUM / LOCAL_SERIAL")
    many_name = f"{nodes} nodes"
    print(f"{'metric':<44}{'1 node':>10}{many_name:>10}{f'{nodes} nodes / 1 node':>20}")
    rows = [("faces written / s (put_image)", "write"), ("embeddings read / s (scan, iter_embeddings)", "scan"),
            (f"faces read / s (get_faces, {READ_BATCH} ids a call)", "read"),
            ("labels written / s (put_label, conditional)", "label")]
    for label, key in rows:
        a = f"{one[key]:.0f}" if one else "n/a"
        b = f"{many[key]:.0f}" if many else "n/a"
        ratio = f"{many[key] / one[key]:.2f}" if one and many else "n/a"
        print(f"{label:<44}{a:>10}{b:>10}{ratio:>20}")
    for name, result in (("1 node", one), (many_name, many)):
        if result and result["faces"] < NODES_FACES:
            print(f"{name}: wrote {result['faces']} of {NODES_FACES} faces in the {WRITE_BUDGET_S:.0f}s budget")
