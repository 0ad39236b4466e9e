"""Scale-out bench (issue 15), measured on the real Cassandra of `make cassandra-start`
(127.0.0.1:9142, a keyspace of its own, dropped afterwards), with data generated in bulk
(execute_concurrent straight into the tables; one BELONGS label per persona):
1. label -> new active version: the trainer service in-process, its default debounce
   (target < 30 s at 1M faces / 10k personas).
2. Full re-classification shared by 1 and by 2 worker processes (each its own store session
   claiming shards of one job), effective faces/s and the scaling ratio (target >= 100k/s
   effective after a one-label change).
3. ListUnknownFaces page latency through the query service (p50/p90 of page 1 and the next).

    python -m bench.bench_scaleout --faces 50000     # a smaller run (default: BENCH_SCALEOUT_FACES or 1M)
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import numpy as np
from cassandra.concurrent import execute_concurrent_with_args

from visage.config import CassandraConfig, Config
from visage.store.cassandra import CassandraStore
from visage.store.records import LabelRecord, embedding_to_bytes
from visage.v1 import query_pb2, query_pb2_grpc
from visage.v1 import resources_pb2 as pb
from visage_classifier.models import ActiveModel
from visage_classifier.reclassify import TERMINAL, Run, SharedWork, follow
from visage_trainer.server import start as start_trainer
from visage_trainer.training import TrainerSettings

CASSANDRA_PORT = int(os.environ.get("VISAGE_TEST_CASSANDRA_PORT", "9142"))
FACES_PER_IMAGE = 10
FACES_PER_PERSONA = 100  # 1M faces: 10k personas


def cassandra_config(keyspace: str) -> CassandraConfig:
    return CassandraConfig(contact_points=("127.0.0.1",), port=CASSANDRA_PORT, keyspace=keyspace)


def bulk(store: CassandraStore, cql: str, rows: list[tuple]) -> None:
    execute_concurrent_with_args(store._session, store._stmt(cql), rows, concurrency=128, raise_on_first_error=True)


def generate(store: CassandraStore, faces: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Personas, images of FACES_PER_IMAGE faces and one BELONGS label per persona, in bulk
    (but the last two, which label_to_active writes through the store).
    Returns the persona ids and the face ids of the labelled faces (in persona order)."""
    rng = np.random.default_rng(seed)
    personas = max(2, faces // FACES_PER_PERSONA)
    centres = rng.normal(scale=0.9 / np.sqrt(2 * 128), size=(personas, 128)).astype(np.float32)
    persona_ids = [f"{k:016x}" for k in range(personas)]
    now = time.time()
    bulk(store, "INSERT INTO {ks}.personas (persona_id, display_name, create_time, update_time) VALUES (?, ?, ?, ?)",
         [(p, f"persona {k}", now, now) for k, p in enumerate(persona_ids)])
    day = int(now // 86400)
    store._run("INSERT INTO {ks}.days (kind, day) VALUES ('images', ?)", (day,))
    labelled: list[str] = []
    step = 50_000
    for start_row in range(0, faces, step):
        count = min(step, faces - start_row)
        owners = (np.arange(start_row, start_row + count) % personas)
        rows = centres[owners] + rng.normal(scale=0.3 / np.sqrt(128), size=(count, 128)).astype(np.float32)
        image_ids = [f"{(start_row + i) // FACES_PER_IMAGE:064x}" for i in range(0, count, FACES_PER_IMAGE)]
        face_rows, placed = [], []
        for i in range(count):
            image_id, idx = f"{(start_row + i) // FACES_PER_IMAGE:064x}", (start_row + i) % FACES_PER_IMAGE
            face_id = f"{image_id}-{idx}"
            face_rows.append((face_id, image_id, idx, "[0, 0, 1, 1]", "[]", embedding_to_bytes(rows[i]), now))
            placed.append((image_id, idx, face_id))
            if start_row + i < personas:
                labelled.append(face_id)
        bulk(store, "INSERT INTO {ks}.faces (face_id, image_id, idx, box, landmarks, embedding, create_time) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)", face_rows)
        bulk(store, "INSERT INTO {ks}.faces_by_image (image_id, idx, face_id) VALUES (?, ?, ?)", placed)
        bulk(store, "INSERT INTO {ks}.images_by_day (day, create_time, image_id) VALUES (?, ?, ?)",
             [(day, now + n * 1e-6, image_id) for n, image_id in enumerate(image_ids, start=start_row)])
        bulk(store, "INSERT INTO {ks}.images (image_id, filename, content_type, width, height, size_bytes, "
                    "face_count, status, create_time, chunk_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
             [(image_id, "bulk", "image/jpeg", 1, 1, 1, FACES_PER_IMAGE, pb.IMAGE_STATUS_FACES_FOUND,
               now + n * 1e-6, 0) for n, image_id in enumerate(image_ids, start=start_row)])
        print(f"  generated {start_row + count:,} of {faces:,} faces", flush=True)
    bulk(store, "INSERT INTO {ks}.labels_by_persona (persona_id, verdict, face_id) VALUES (?, ?, ?)",
         [(persona_ids[k], pb.VERDICT_BELONGS, face_id) for k, face_id in enumerate(labelled[:-2])])
    bulk(store, "INSERT INTO {ks}.labels (face_id, persona_id, verdict, labelled_by, create_time, belongs) "
                "VALUES (?, ?, ?, 'bench', ?, ?)",
         [(face_id, persona_ids[k], pb.VERDICT_BELONGS, now, persona_ids[k]) for k, face_id in enumerate(labelled[:-2])])
    return persona_ids, labelled


def wait_active(store, version: int, timeout: float = 900.0) -> None:
    deadline = time.monotonic() + timeout
    while (active := store.active_model_version()) is None or active.version < version:
        if time.monotonic() > deadline:
            raise RuntimeError(f"version {version} not active; jobs {store.list_training_jobs(3)}")
        time.sleep(0.05)


def label_to_active(store: CassandraStore, persona_ids: list[str], labelled: list[str]) -> float:
    """Seconds from the last persona's first label to the version that includes it being active."""
    with tempfile.TemporaryDirectory() as tmp:
        service = start_trainer(Config(data_dir=Path(tmp)), store, "127.0.0.1:0", TrainerSettings.from_env())
        try:
            # Bulk labels append no events: one label through the store wakes the trainer.
            store.put_label(LabelRecord(labelled[-2], persona_ids[len(labelled) - 2], pb.VERDICT_BELONGS))
            wait_active(store, 1)  # trained on every label but the last
            began = time.perf_counter()
            store.put_label(LabelRecord(labelled[-1], persona_ids[len(labelled) - 1], pb.VERDICT_BELONGS))
            wait_active(store, 2)
            return time.perf_counter() - began
        finally:
            service.stop(0)


def worker(keyspace: str, job: str, shards: int, ready, go, results) -> None:
    """One replica's share of a job (a separate process: its own interpreter and session)."""
    store = CassandraStore(cassandra_config(keyspace))
    try:
        models = ActiveModel(store)
        predictor = models.refresh()
        run = Run(store, predictor, work=SharedWork(shards=shards, poll_seconds=0.05), job=job)
        ready.release()
        go.wait()
        began = time.time()
        run.start()
        final = list(follow(run, lambda: True))[-1]
        assert final.state in TERMINAL
        results.put((began, time.time(), final.done, final.message))
    finally:
        store.close()


def reclassify(keyspace: str, workers: int, shards: int) -> tuple[float, int]:
    """(effective faces/s, faces) of one job shared by `workers` processes."""
    context = multiprocessing.get_context("spawn")
    ready, go, results = context.Semaphore(0), context.Event(), context.Queue()
    job = f"bench-{workers}w-{uuid.uuid4().hex[:8]}"
    processes = [context.Process(target=worker, args=(keyspace, job, shards, ready, go, results))
                 for _ in range(workers)]
    for process in processes:
        process.start()
    for _ in processes:
        ready.acquire()
    go.set()
    finished = [results.get(timeout=3600) for _ in processes]
    for process in processes:
        process.join()
    began, ended = min(r[0] for r in finished), max(r[1] for r in finished)
    return finished[0][2] / (ended - began), finished[0][2]


def unknown_page_latency(store: CassandraStore, pages: int = 10) -> tuple[list[float], list[float]]:
    from visage_query.server import start as start_query
    with tempfile.TemporaryDirectory() as tmp:
        service = start_query(Config(data_dir=Path(tmp)), store, "127.0.0.1:0")
        first, next_ = [], []
        try:
            with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
                stub = query_pb2_grpc.QueryServiceStub(channel)
                for _ in range(pages):
                    began = time.perf_counter()
                    page = stub.ListUnknownFaces(query_pb2.ListUnknownFacesRequest(page_size=50))
                    first.append(time.perf_counter() - began)
                    if page.next_page_token:
                        began = time.perf_counter()
                        stub.ListUnknownFaces(query_pb2.ListUnknownFacesRequest(
                            page_size=50, page_token=page.next_page_token))
                        next_.append(time.perf_counter() - began)
        finally:
            service.stop(0)
    return first, next_


def ms(samples: list[float], q: float) -> str:
    return f"{np.percentile(samples, q) * 1000:.0f}" if samples else "-"


def run(faces: int, shards: int) -> None:
    try:
        socket.create_connection(("127.0.0.1", CASSANDRA_PORT), timeout=2).close()
    except OSError:
        print(f"no Cassandra on 127.0.0.1:{CASSANDRA_PORT}: run `make cassandra-fetch cassandra-start`")
        return
    keyspace = f"visage_bench_scaleout_{uuid.uuid4().hex[:8]}"
    store = CassandraStore(cassandra_config(keyspace))
    store.migrate()
    try:
        began = time.perf_counter()
        persona_ids, labelled = generate(store, faces)
        generated = time.perf_counter() - began
        latency = label_to_active(store, persona_ids, labelled)
        baseline_rate, _ = reclassify(keyspace, 1, 1)  # one shard: a single scan, as before sharing
        one_rate, done = reclassify(keyspace, 1, shards)
        two_rate, _ = reclassify(keyspace, 2, shards)
        first, next_ = unknown_page_latency(store)
        print(f"Cassandra, {faces:,} faces / {len(persona_ids):,} personas "
              f"(generated in {generated:.0f} s, {faces / generated:,.0f} faces/s):")
        print(f"{'measure':<52} {'measured':>22} {'target':>14}")
        print(f"{'label -> new active version':<52} {latency:>20.1f} s {'< 30 s':>14}")
        print(f"{'full re-classification, 1 process, 1 shard (baseline)':<52} {baseline_rate:>16,.0f} faces/s {'':>14}")
        print(f"{f'full re-classification, 1 worker process, {shards} shards':<52} {one_rate:>16,.0f} faces/s "
              f"{'':>14}")
        print(f"{'full re-classification, 2 worker processes':<52} {two_rate:>16,.0f} faces/s {'>= 100k/s':>14}")
        print(f"{'  scaling 2 vs 1 workers':<52} {two_rate / one_rate:>21.2f}x {'':>14}")
        print(f"{'  faces re-classified per run':<52} {done:>22,} {'':>14}")
        print(f"{'after a one-label change, changed-only writes':<52} {'not implemented':>22} {'>= 100k/s':>14}")
        print(f"{'ListUnknownFaces page 1, p50 / p90 (50 faces)':<52} {ms(first, 50):>15} / {ms(first, 90)} ms")
        print(f"{'ListUnknownFaces next page, p50 / p90':<52} {ms(next_, 50):>15} / {ms(next_, 90)} ms")
        print("(all processes and the Cassandra node share this machine's cores)")
    finally:
        store._session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=300)
        store.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", type=int, default=int(os.environ.get("BENCH_SCALEOUT_FACES", "1000000")))
    parser.add_argument("--shards", type=int, default=64)
    args = parser.parse_args(argv if argv is not None else [])
    run(args.faces, args.shards)


if __name__ == "__main__":
    import sys
    main(sys.argv[1:])
