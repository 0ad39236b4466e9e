"""Ingest throughput: the bare face pipeline in-process (the baseline: one
FacePipeline, one image after another) vs the same images through the gRPC
IngestService (IngestImages streams of 16, as `visage ingest` sends them) into
the store, with 1 and 2 pipeline workers. SQLite always; Cassandra too when
one answers on VISAGE_TEST_CASSANDRA_PORT (9142, `make cassandra-start`).

Targets: service >= 0.95x bare with one worker, >= 1.8x with two. The machine
has 2 cores shared with other work, so ratios in one run are what to compare."""
from __future__ import annotations

import os
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc

from visage.auth import client as auth_client
from visage.config import CassandraConfig, Config
from visage.faces.pipeline import FacePipeline
from visage.faces.settings import FaceSettings
from visage.store import open_store
from visage.v1 import ingest_pb2, ingest_pb2_grpc

BATCH = 16
CASSANDRA_PORT = int(os.environ.get("VISAGE_TEST_CASSANDRA_PORT", "9142"))


def shared_images() -> list[tuple[str, bytes]]:
    from tests.conftest import find_faces_dir
    root = find_faces_dir()
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    return [(str(path.relative_to(root)), path.read_bytes()) for path in paths]


def bare(images: list[tuple[str, bytes]]) -> tuple[float, int]:
    pipeline = FacePipeline(Config(), FaceSettings.from_env())
    pipeline.analyze(images[0][1])  # warm caches
    start = time.perf_counter()
    faces = sum(len(pipeline.analyze(content).faces) for _, content in images)
    return time.perf_counter() - start, faces


def through_service(images: list[tuple[str, bytes]], config: Config) -> tuple[float, int]:
    from visage_ingest.server import start as start_service
    store = open_store(config)
    service = start_service(config, store, "127.0.0.1:0")  # its own pool, started (warm) here
    try:
        with auth_client.channel(f"127.0.0.1:{service.port}") as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            begin = time.perf_counter()
            faces = failures = 0
            for first in range(0, len(images), BATCH):
                summary = stub.IngestImages(ingest_pb2.IngestImagesRequest(content=content, filename=name)
                                            for name, content in images[first:first + BATCH])
                faces, failures = faces + summary.faces, failures + summary.failures
            elapsed = time.perf_counter() - begin
        assert failures == 0 and store.count_images() == len(images), "the service lost or failed images"
        return elapsed, faces
    finally:
        service.stop(None)  # also stops the pool it started
        drop_cassandra_keyspace(store, config)
        store.close()


def cassandra_reachable() -> bool:
    try:
        socket.create_connection(("127.0.0.1", CASSANDRA_PORT), timeout=2).close()
        return True
    except OSError:
        return False


def store_configs(workers: int, data_root: Path) -> list[tuple[str, Config]]:
    configs = [("sqlite", Config(data_dir=data_root / f"sqlite-{workers}", workers=workers))]
    if cassandra_reachable():
        keyspace = f"visage_bench_{uuid.uuid4().hex[:10]}"
        cassandra = CassandraConfig(contact_points=("127.0.0.1",), port=CASSANDRA_PORT, keyspace=keyspace)
        configs.append(("cassandra", Config(store="cassandra", cassandra=cassandra, workers=workers,
                                            data_dir=data_root / f"cassandra-{workers}")))
    return configs


def drop_cassandra_keyspace(store, config: Config) -> None:
    if config.store == "cassandra":
        store._session.execute(f"DROP KEYSPACE IF EXISTS {config.cassandra.keyspace}", timeout=120)


def row(label: str, run: Callable[[], tuple[float, int]], images: int, baseline: float | None) -> float:
    elapsed, faces = run()
    rate = images / elapsed
    ratio = f"{rate / baseline:5.2f}x" if baseline else "1.00x (baseline)"
    print(f"{label:<34} {rate:8.2f} {faces / elapsed:8.2f}   {ratio}", flush=True)
    return rate


def main() -> None:
    images = shared_images()
    cores = os.cpu_count()
    print(f"{len(images)} shared photos; {cores} cores (shared with other work: ratios, not absolutes, count)")
    print(f"{'run':<34} {'images/s':>8} {'faces/s':>8}   vs bare")
    # Other work comes and goes on this machine: the baseline is measured before
    # and after the service runs and averaged, so a load change hits both sides.
    before = row("bare pipeline, in-process (before)", lambda: bare(images), len(images), None)
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        for workers in (1, 2):
            for store_name, config in store_configs(workers, Path(tmp)):
                label = f"service -> {store_name}, {workers} worker{'s' if workers > 1 else ''}"
                runs.append((label, *through_service(images, config)))
    after = row("bare pipeline, in-process (after)", lambda: bare(images), len(images), before)
    baseline = (before + after) / 2
    for label, elapsed, faces in runs:
        row(label, lambda: (elapsed, faces), len(images), baseline)
    print("targets: service >= 0.95x bare with 1 worker, >= 1.8x with 2 workers")


if __name__ == "__main__":
    main()
