"""Ingest throughput: the bare face pipeline in-process (the baseline: one
FacePipeline, one image after another) vs the same images through the gRPC
IngestService (IngestImages streams of 16, as `visage ingest` sends them) into
the store, with 1 and 2 pipeline workers. SQLite always; Cassandra too when
one answers on VISAGE_TEST_CASSANDRA_PORT (9142, `make cassandra-start`).

Targets: service >= 0.95x bare with one worker, >= 1.8x with two. The machine
has 2 cores shared with other work, so ratios in one run are what to compare: every
side runs once a round, in turn (order reversed every other round), over BENCH_ROUNDS
rounds (bench.rounds), each into a fresh store; each ratio is against the bare
pipeline of the same round."""
from __future__ import annotations

import os
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path

import grpc

from bench.rounds import alternating, load_average, spread
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


def store_names() -> list[str]:
    return ["sqlite", "cassandra"] if cassandra_reachable() else ["sqlite"]


def fresh_config(store_name: str, workers: int, data_root: Path) -> Config:
    """A store of its own for one run (a new folder or keyspace, so every run stores every image)."""
    name = f"{store_name}-{workers}-{uuid.uuid4().hex[:10]}"
    if store_name == "sqlite":
        return Config(data_dir=data_root / name, workers=workers)
    cassandra = CassandraConfig(contact_points=("127.0.0.1",), port=CASSANDRA_PORT,
                                keyspace=f"visage_bench_{uuid.uuid4().hex[:10]}")
    return Config(store="cassandra", cassandra=cassandra, workers=workers, data_dir=data_root / name)


def drop_cassandra_keyspace(store, config: Config) -> None:
    if config.store == "cassandra":
        store._session.execute(f"DROP KEYSPACE IF EXISTS {config.cassandra.keyspace}", timeout=120)


def into_fresh_store(images: list[tuple[str, bytes]], store_name: str, workers: int, root: Path) -> tuple[float, int]:
    return through_service(images, fresh_config(store_name, workers, root))


def measured(images: list[tuple[str, bytes]], run: Callable[[], tuple[float, int]], faces: dict[str, int],
             label: str) -> Callable[[], float]:
    """One side of the comparison: a run's images/s (the faces it found kept in `faces`)."""
    def images_per_second() -> float:
        elapsed, faces[label] = run()
        return len(images) / elapsed
    return images_per_second


BARE = "bare pipeline, in-process"


def main() -> None:
    images = shared_images()
    print(f"{len(images)} shared photos; {load_average()} (shared with other work: ratios, not absolutes, count)")
    faces: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        sides = {BARE: measured(images, partial(bare, images), faces, BARE)}
        for workers in (1, 2):
            for store_name in store_names():
                label = f"service -> {store_name}, {workers} worker{'s' if workers > 1 else ''}"
                run = partial(into_fresh_store, images, store_name, workers, Path(tmp))
                sides[label] = measured(images, run, faces, label)
        rates = alternating(sides)
    print(f"{'run':<34} {'images/s min / median / max':>28} {'faces':>6}   {'vs bare, min / median / max':>28}")
    for label, values in rates.items():
        ratios = [rate / bare_rate for rate, bare_rate in zip(values, rates[BARE])]
        print(f"{label:<34} {spread(values):>28} {faces[label]:>6}   {spread(ratios):>28}")
    print(f"targets: service >= 0.95x bare with 1 worker, >= 1.8x with 2 workers; {load_average()}")


if __name__ == "__main__":
    main()
