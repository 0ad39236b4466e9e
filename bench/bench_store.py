"""Store backends side by side: SQLite (baseline) vs Cassandra (the node from
`make cassandra-start`): faces written/s through put_image (ingest), embeddings
read/s through iter_embeddings (the trainer's read), and predictions written/s
through put_predictions in the classifier's batches (a first classification, then
a re-classification by a new version that replaces every face's prediction), and
through put_prediction_columns (the re-classification's own write): replacing
predictions written in face id order, and replacing ones first written in ingest
order (face ids arrive at random, as content hashes do), for N synthetic faces of
128 floats.

Every figure is taken over BENCH_ROUNDS rounds (bench.rounds), the backends in turn (order
reversed every other round), each round into a fresh store (what is measured is writing into
it); shown as min / median / max, the ratio per round.

`python -m bench store --nodes 3` instead: writes/s and reads/s on the single node vs a
3-node cluster with replication factor 3 (main_nodes below), likewise in alternating rounds."""
from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench.rounds import ROUNDS, alternating, by_figure, load_average, ratios, spread
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


@contextmanager
def fresh_sqlite() -> Iterator[Store]:
    """A fresh SQLite store in a temporary directory (removed afterwards)."""
    from visage.store.sqlite import SqliteStore
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "bench.db")
        store.migrate()
        try:
            yield store
        finally:
            store.close()


@contextmanager
def fresh_keyspace(config: CassandraConfig) -> Iterator[Store]:
    """A fresh keyspace of `config` (dropped afterwards); StoreError when nothing answers."""
    from visage.store.cassandra import CassandraStore
    store = CassandraStore(config)
    store._session.execute(f"DROP KEYSPACE IF EXISTS {config.keyspace}", timeout=120)
    store.migrate()
    try:
        yield store
    finally:
        store._session.execute(f"DROP KEYSPACE IF EXISTS {config.keyspace}", timeout=120)
        store.close()


def single_node(keyspace: str) -> CassandraConfig:
    """The node of `make cassandra-start`."""
    return CassandraConfig(contact_points=("127.0.0.1",), port=CASSANDRA_PORT, keyspace=keyspace,
                           connect_timeout_seconds=120)


def cassandra_answers() -> bool:
    """Whether the node of `make cassandra-start` listens (else the benches say so and skip it)."""
    try:
        socket.create_connection(("127.0.0.1", CASSANDRA_PORT), timeout=2).close()
        return True
    except OSError:
        print(f"cassandra: not measured (nothing on 127.0.0.1:{CASSANDRA_PORT}); run `make cassandra-start`")
        return False


def on_sqlite(measure: Callable[[str, Store], dict]) -> dict:
    """measure("sqlite", store) on a fresh SQLite store in a temporary directory."""
    with fresh_sqlite() as store:
        return measure("sqlite", store)


def on_cassandra(measure: Callable[[str, Store], dict], keyspace: str) -> dict | None:
    """measure("cassandra", store) on a fresh keyspace of the project's Cassandra
    (dropped afterwards); None, saying why, when no node answers."""
    return on_config(measure, "cassandra", single_node(keyspace))


def backends(stack: ExitStack, keyspace: str) -> dict[str, Store]:
    """{"sqlite": a fresh store, "cassandra": a fresh keyspace when the node answers}, open until
    `stack` closes: for benches that fill both once, then alternate rounds between them."""
    stores = {"sqlite": stack.enter_context(fresh_sqlite())}
    if cassandra_answers():
        stores["cassandra"] = stack.enter_context(fresh_keyspace(single_node(keyspace)))
    return stores


def main() -> None:
    if NODES > 1:
        main_nodes(NODES)
        return
    sides = {"sqlite": lambda: on_sqlite(measure)}
    if cassandra_answers():
        sides["cassandra"] = lambda: on_cassandra(measure, "visage_bench_store")
    results = {name: by_figure(rounds) for name, rounds in alternating(sides).items()}
    sqlite, cassandra = results["sqlite"], results.get("cassandra")
    print(f"\nstore backends, {FACES} faces x 128 float32, {FACES_PER_IMAGE} faces/image, "
          f"{WRITER_THREADS} writer threads; min / median / max of {ROUNDS} rounds, sqlite and cassandra "
          f"alternating, a fresh store each round; {load_average()}")
    print(f"{'metric':<38}{'sqlite':>28}{'cassandra':>28}{'sqlite/cassandra':>24}")
    rows = [("faces written / s", "write", 0), ("embeddings read / s", "read", 0),
            ("read all embeddings for training (s)", "train_read_s", 2),
            ("predictions written / s (first)", "predict_first", 0),
            ("predictions written / s (replacing)", "predict_again", 0),
            ("  the same as columns", "predict_columns", 0),
            ("  columns, after ingest-order writes", "predict_after_ingest_order", 0)]
    for label, key, digits in rows:
        c = spread(cassandra[key], digits) if cassandra else "n/a"
        ratio = spread(ratios(sqlite[key], cassandra[key])) if cassandra else "n/a"
        print(f"{label:<38}{spread(sqlite[key], digits):>28}{c:>28}{ratio:>24}")


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
    with ExitStack() as stack:
        try:
            store = stack.enter_context(fresh_keyspace(config))
        except StoreError as e:
            print(f"{name}: not measured ({e}); run `make cassandra-start`")
            return None
        return measure(name, store)


@contextmanager
def cluster(nodes: int, keyspace: str) -> Iterator[CassandraConfig | None]:
    """The config of the `nodes`-node cluster, started (and stopped again) unless it runs; None,
    saying why, when it did not start. Holds the cluster's lock, as tests/store/test_three_nodes.py
    does: one user at a time."""
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
            yield None
            return
        try:
            yield CassandraConfig(contact_points=tuple(f"127.0.0.{i}" for i in range(1, nodes + 1)),
                                  port=CLUSTER_PORT, keyspace=keyspace,
                                  replication=f"{{'class': 'SimpleStrategy', 'replication_factor': {nodes}}}",
                                  connect_timeout_seconds=120)
        finally:
            if not running:
                subprocess.run([*script, "stop", "--cluster", str(nodes)])


def main_nodes(nodes: int) -> None:
    """measure_replicated on the single node and on the cluster, alternating, a fresh keyspace
    each round."""
    many_name = f"{nodes} nodes"
    with cluster(nodes, "visage_bench_store_nodes") as many_config:
        sides = {"1 node": lambda: on_config(measure_replicated, "1 node", single_node("visage_bench_store_nodes"))}
        if many_config is not None:
            sides[many_name] = lambda: on_config(measure_replicated, many_name, many_config)
        measured = alternating(sides)
    results = {name: by_figure(rounds) for name, rounds in measured.items() if None not in rounds}
    one, many = results.get("1 node"), results.get(many_name)
    print(f"\nstore on 1 node (replication factor 1) vs {nodes} nodes (replication factor {nodes}), all on this "
          f"machine's {os.cpu_count()} cores: {NODES_FACES} faces x 128 float32, {FACES_PER_IMAGE} faces/image, "
          f"{NODES_LABELS} labels, {WRITER_THREADS} caller threads, LOCAL_QUORUM / LOCAL_SERIAL; min / median / max "
          f"of {ROUNDS} rounds, the two alternating, a fresh keyspace each; {load_average()}")
    print(f"{'metric':<46}{'1 node':>26}{many_name:>26}{f'{nodes} nodes / 1 node':>22}")
    rows = [("faces written / s (put_image)", "write"), ("embeddings read / s (scan, iter_embeddings)", "scan"),
            (f"faces read / s (get_faces, {READ_BATCH} ids a call)", "read"),
            ("labels written / s (put_label, conditional)", "label")]
    for label, key in rows:
        a = spread(one[key], 0) if one else "n/a"
        b = spread(many[key], 0) if many else "n/a"
        ratio = spread(ratios(many[key], one[key])) if one and many else "n/a"
        print(f"{label:<46}{a:>26}{b:>26}{ratio:>22}")
    for name, result in (("1 node", one), (many_name, many)):
        if result and min(result["faces"]) < NODES_FACES:
            print(f"{name}: wrote as few as {min(result['faces']):.0f} of {NODES_FACES} faces in the "
                  f"{WRITE_BUDGET_S:.0f}s budget")
