"""Backup and restore rates (issue 26), on SQLite and on Cassandra (the node from
`make cassandra-start`): with N synthetic faces stored (4 per image, every face predicted,
1,000 labelled, two model versions), `visage backup`'s work (the archive read through the
store roles, sealed with AES-256-GCM into a file) and `visage restore`'s (verified, then written
into an empty store of the same backend), in faces per second. The baseline is the issue's
yardstick, 100k faces in 10 minutes each way (~167 faces/s); the ratio is measured / baseline.
Each store is filled once; then BENCH_ROUNDS rounds (bench.rounds), the stores in turn (order
reversed every other round), each a backup into a new archive and its restore into a fresh empty
store: min / median / max over the rounds."""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bench.bench_store import FACES_PER_IMAGE, WRITER_THREADS, backends, fresh_keyspace, fresh_sqlite, single_node, synthetic_images
from bench.rounds import ROUNDS, alternating, by_figure, load_average, spread
from visage.store import archive
from visage.store.base import Store
from visage.store.records import LabelRecord, ModelVersionRecord
from visage.v1 import resources_pb2 as pb

FACES = int(os.environ.get("VISAGE_BENCH_BACKUP_FACES", "100000"))
LABELS = 1000
BASELINE_FACES_PER_S = 100_000 / 600


def populate(name: str, store: Store) -> None:
    images = list(synthetic_images(FACES))
    with ThreadPoolExecutor(WRITER_THREADS) as pool, tqdm(total=FACES, desc=f"{name}: faces", unit="face") as bar:
        for item in pool.map(lambda item: store.put_image(*item) and item, images):
            bar.update(len(item[2]))
    personas = [store.create_persona(f"person {i}") for i in range(10)]
    labelled = [(faces[0].face_id, personas[i % 10].persona_id) for i, (_im, _c, faces) in enumerate(images[:LABELS])]
    with ThreadPoolExecutor(WRITER_THREADS) as pool:
        list(tqdm(pool.map(lambda pair: store.put_label(LabelRecord(pair[0], pair[1], pb.VERDICT_BELONGS)), labelled),
                  total=len(labelled), desc=f"{name}: labels", unit="label"))
    face_ids = [face.face_id for _image, _content, faces in images for face in faces]
    rng = np.random.default_rng(1)
    choices = np.array([p.persona_id for p in personas] + [""])[rng.integers(0, 11, len(face_ids))]
    for start in tqdm(range(0, len(face_ids), 8192), desc=f"{name}: predictions", unit="batch"):
        store.put_prediction_columns(face_ids[start:start + 8192], choices[start:start + 8192].tolist(),
                                     rng.random(len(face_ids[start:start + 8192])), 1, time.time())
    for _ in range(2):
        version = store.put_model_version(ModelVersionRecord(0, pb.MODEL_STATE_CANDIDATE, "bench", 0.5,
                                                             [p.persona_id for p in personas], {}, {}), b"\0" * 50_000)
    store.activate_model_version(version.version)


def backup_and_restore(name: str, store: Store, empty_store: Callable[[], AbstractContextManager[Store]]) -> dict:
    """One round: the filled store backed up into a new archive, restored into a fresh empty store."""
    with tempfile.TemporaryDirectory() as tmp:
        path, key = Path(tmp) / "bench.vbk", archive.new_key(Path(tmp) / "key")
        with tqdm(total=FACES, desc=f"{name}: backup", unit="face") as bar:
            began = time.perf_counter()
            archive.write_backup(store, path, key, lambda p: bar.update(p.faces_done - bar.n))
            backup_s = time.perf_counter() - began
        size = path.stat().st_size
        with empty_store() as target, tqdm(total=FACES, desc=f"{name}: restore", unit="face") as bar:
            began = time.perf_counter()
            counts = archive.restore(target, lambda: archive.open_plain(path, key),
                                     progress=lambda p: bar.update(p.faces_done - bar.n))
            restore_s = time.perf_counter() - began
            assert counts["faces"] == FACES and counts["labels"] == LABELS, counts
            assert target.active_model_version().version == store.active_model_version().version
    return {"backup": FACES / backup_s, "restore": FACES / restore_s, "backup_s": backup_s, "restore_s": restore_s,
            "mib": size / 2**20}


EMPTY_STORES = {"sqlite": fresh_sqlite, "cassandra": lambda: fresh_keyspace(single_node("visage_bench_restored"))}


def main() -> None:
    with ExitStack() as stack:
        stores = backends(stack, "visage_bench_backup")
        for name, store in stores.items():
            populate(name, store)
        rounds = alternating({name: lambda name=name: backup_and_restore(name, stores[name], EMPTY_STORES[name])
                              for name in stores})
    results = {name: by_figure(values) for name, values in rounds.items()}
    cassandra = results.get("cassandra")
    print(f"\nbackup and restore, {FACES} faces ({FACES_PER_IMAGE}/image, all predicted, {LABELS} labelled), "
          f"archive {statistics.median(results['sqlite']['mib']):.0f} MiB; faces / s, min / median / max of "
          f"{ROUNDS} rounds, the stores alternating; {load_average()}")
    print(f"{'metric':<20}{'baseline':>10}{'sqlite':>24}{'/base (median)':>16}{'cassandra':>24}{'/base (median)':>16}")
    for label, key in (("backup faces / s", "backup"), ("restore faces / s", "restore")):
        sqlite = results["sqlite"][key]
        c = spread(cassandra[key], 0) if cassandra else "n/a"
        c_ratio = f"{statistics.median(cassandra[key]) / BASELINE_FACES_PER_S:.2f}" if cassandra else "n/a"
        print(f"{label:<20}{BASELINE_FACES_PER_S:>10.0f}{spread(sqlite, 0):>24}"
              f"{statistics.median(sqlite) / BASELINE_FACES_PER_S:>16.2f}{c:>24}{c_ratio:>16}")
