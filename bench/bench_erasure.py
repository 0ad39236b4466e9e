"""Erasure at scale (issue 14), on SQLite and on Cassandra (the node from
`make cassandra-start`): with N synthetic faces stored (4 per image, every face
predicted, a few model versions), erasing one image with a labelled face, and a
persona with 1,000 labelled faces together with their images (DeletePersona
erase_faces). The baseline is the issue's target: < 1 s and < 10 s on SQLite
(Cassandra is reported beside it); the ratio column is measured / target."""
from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from bench.bench_store import (
    FACES_PER_IMAGE,
    NODES,
    WRITER_THREADS,
    on_cassandra,
    on_cluster,
    on_sqlite,
    synthetic_images,
)
from visage.store.base import Store
from visage.store.records import LabelRecord, ModelVersionRecord
from visage.v1 import resources_pb2 as pb

FACES = int(os.environ.get("VISAGE_BENCH_ERASE_FACES", "100000"))
PERSONA_FACES = int(os.environ.get("VISAGE_BENCH_ERASE_PERSONA_FACES", "1000"))
IMAGE_ERASURES = 5  # single-image erasures timed (median reported)
TARGETS_S = {"image": 1.0, "persona": 10.0}


def populate(name: str, store: Store) -> tuple[list[str], str, str]:
    """N faces, every one predicted; the target persona labelled on one face of each of
    PERSONA_FACES images, another persona on others; two versions naming both.
    Returns (image ids of single-erasure candidates, target persona id, other persona id)."""
    images = list(synthetic_images(FACES))
    with ThreadPoolExecutor(WRITER_THREADS) as pool, tqdm(total=FACES, desc=f"{name}: faces", unit="face") as bar:
        for item in pool.map(lambda item: store.put_image(*item) and item, images):
            bar.update(len(item[2]))
    target, other = store.create_persona("target"), store.create_persona("other")
    labelled = [(faces[0].face_id, target.persona_id) for _image, _content, faces in images[:PERSONA_FACES]]
    labelled += [(faces[0].face_id, other.persona_id)
                 for _image, _content, faces in images[PERSONA_FACES:PERSONA_FACES + IMAGE_ERASURES + 50]]
    with ThreadPoolExecutor(WRITER_THREADS) as pool:
        list(tqdm(pool.map(lambda pair: store.put_label(LabelRecord(pair[0], pair[1], pb.VERDICT_BELONGS)), labelled),
                  total=len(labelled), desc=f"{name}: labels", unit="label"))
    face_ids = [face.face_id for _image, _content, faces in images for face in faces]
    rng = np.random.default_rng(1)
    personas = np.array([target.persona_id, other.persona_id, ""])[rng.integers(0, 3, len(face_ids))]
    for start in tqdm(range(0, len(face_ids), 8192), desc=f"{name}: predictions", unit="batch"):
        store.put_prediction_columns(face_ids[start:start + 8192], personas[start:start + 8192].tolist(),
                                     rng.random(len(face_ids[start:start + 8192])), 1, time.time())
    for _ in range(2):
        version = store.put_model_version(ModelVersionRecord(0, pb.MODEL_STATE_CANDIDATE, "bench", 0.5,
                                                             [target.persona_id, other.persona_id], {}, {}),
                                          b"\0" * 50_000)
    store.activate_model_version(version.version)
    candidates = [image.image_id for image, _c, _f in images[PERSONA_FACES:PERSONA_FACES + IMAGE_ERASURES]]
    return candidates, target.persona_id, other.persona_id


def measure(name: str, store: Store) -> dict:
    candidates, target, _other = populate(name, store)
    image_times = []
    for image_id in tqdm(candidates, desc=f"{name}: erase images", unit="image"):
        began = time.perf_counter()
        store.delete_image(image_id)
        image_times.append(time.perf_counter() - began)
    assert store.get_image(candidates[0]) is None
    began = time.perf_counter()
    erasure = store.delete_persona(target, erase_faces=True)
    persona_s = time.perf_counter() - began
    assert len(erasure.image_ids) == PERSONA_FACES and store.get_persona(target) is None
    return {"image": statistics.median(image_times), "image_max": max(image_times), "persona": persona_s,
            "persona_faces": len(erasure.face_ids)}


def main() -> None:
    """SQLite and the single node; with `python -m bench erasure --nodes 3` also the 3-node
    cluster (replication factor 3, the same cores), side by side."""
    sqlite, cassandra = on_sqlite(measure), on_cassandra(measure, "visage_bench_erasure")
    cluster = on_cluster(NODES, measure) if NODES > 1 else None
    print(f"\nerasure with {FACES} faces stored ({FACES_PER_IMAGE}/image, all predicted), {os.cpu_count()} cores")
    print(f"{'operation':<64}{'target s':>9}{'sqlite s':>10}{'/target':>9}{'cassandra s':>13}{'/target':>9}"
          + (f"{f'{NODES} nodes s':>13}{'/target':>9}" if NODES > 1 else ""))
    rows = [(f"erase one image (median of {IMAGE_ERASURES})", "image"),
            (f"erase a persona, {PERSONA_FACES} labelled faces + images ({sqlite['persona_faces']} faces)",
             "persona")]
    for label, key in rows:
        target = TARGETS_S[key]
        line = f"{label:<64}{target:>9.1f}{sqlite[key]:>10.4f}{sqlite[key] / target:>9.2f}"
        for result in [cassandra] + ([cluster] if NODES > 1 else []):
            line += (f"{result[key]:>13.3f}{result[key] / target:>9.2f}" if result else f"{'n/a':>13}{'n/a':>9}")
        print(line)
    slowest = "".join(f"{result['image_max']:>13.3f}{'':>9}" if result else f"{'n/a':>13}{'':>9}"
                      for result in [cassandra] + ([cluster] if NODES > 1 else []))
    print(f"{'  slowest single-image erasure':<64}{'':>9}{sqlite['image_max']:>10.4f}{'':>9}{slowest}")
