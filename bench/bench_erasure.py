"""Erasure at scale (issue 14), on SQLite and on Cassandra (the node from
`make cassandra-start`): with N synthetic faces stored (4 per image, every face
predicted, a few model versions), erasing one image with a labelled face, and a
persona with 1,000 labelled faces together with their images (DeletePersona
erase_faces). The baseline is the issue's target: < 1 s and < 10 s on SQLite
(Cassandra is reported beside it); the ratio column is measured / target.
Each store is filled once (with a persona to erase for each round); then BENCH_ROUNDS
rounds (bench.rounds), the stores in turn (order reversed every other round), each erasing
IMAGE_ERASURES images and one persona: min / median / max over the rounds."""
from __future__ import annotations

import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import numpy as np
from tqdm import tqdm

from bench.bench_store import FACES_PER_IMAGE, NODES, WRITER_THREADS, backends, cluster, fresh_keyspace, synthetic_images
from bench.rounds import ROUNDS, alternating, by_figure, load_average, spread
from visage.store.base import Store
from visage.store.records import LabelRecord, ModelVersionRecord
from visage.v1 import resources_pb2 as pb

FACES = int(os.environ.get("VISAGE_BENCH_ERASE_FACES", "100000"))
PERSONA_FACES = int(os.environ.get("VISAGE_BENCH_ERASE_PERSONA_FACES", "1000"))
IMAGE_ERASURES = 5  # single-image erasures timed each round (its median and slowest kept)
TARGETS_S = {"image": 1.0, "persona": 10.0}


def populate(name: str, store: Store) -> tuple[list[str], list[str]]:
    """N faces, every one predicted; ROUNDS target personas, each labelled on one face of
    each of PERSONA_FACES images, another persona on others; two versions naming them all.
    Returns (image ids of single-erasure candidates, target persona ids)."""
    images = list(synthetic_images(FACES))
    single = ROUNDS * IMAGE_ERASURES
    targeted = ROUNDS * PERSONA_FACES
    assert len(images) >= targeted + single + 50, f"{FACES} faces: too few for {ROUNDS} rounds of erasures"
    with ThreadPoolExecutor(WRITER_THREADS) as pool, tqdm(total=FACES, desc=f"{name}: faces", unit="face") as bar:
        for item in pool.map(lambda item: store.put_image(*item) and item, images):
            bar.update(len(item[2]))
    targets = [store.create_persona(f"target {i}").persona_id for i in range(ROUNDS)]
    other = store.create_persona("other").persona_id
    labelled = [(faces[0].face_id, targets[i // PERSONA_FACES])
                for i, (_image, _content, faces) in enumerate(images[:targeted])]
    labelled += [(faces[0].face_id, other) for _image, _content, faces in images[targeted:targeted + single + 50]]
    with ThreadPoolExecutor(WRITER_THREADS) as pool:
        list(tqdm(pool.map(lambda pair: store.put_label(LabelRecord(pair[0], pair[1], pb.VERDICT_BELONGS)), labelled),
                  total=len(labelled), desc=f"{name}: labels", unit="label"))
    face_ids = [face.face_id for _image, _content, faces in images for face in faces]
    rng = np.random.default_rng(1)
    personas = np.array([*targets, other, ""])[rng.integers(0, ROUNDS + 2, len(face_ids))]
    for start in tqdm(range(0, len(face_ids), 8192), desc=f"{name}: predictions", unit="batch"):
        store.put_prediction_columns(face_ids[start:start + 8192], personas[start:start + 8192].tolist(),
                                     rng.random(len(face_ids[start:start + 8192])), 1, time.time())
    for _ in range(2):
        version = store.put_model_version(ModelVersionRecord(0, pb.MODEL_STATE_CANDIDATE, "bench", 0.5,
                                                             [*targets, other], {}, {}), b"\0" * 50_000)
    store.activate_model_version(version.version)
    candidates = [image.image_id for image, _c, _f in images[targeted:targeted + single]]
    return candidates, targets


def erase_round(store: Store, candidates: list[str], targets: list[str]) -> dict:
    """IMAGE_ERASURES single-image erasures and one persona's (taken off the lists given)."""
    image_times = []
    for _ in range(IMAGE_ERASURES):
        image_id = candidates.pop()
        began = time.perf_counter()
        store.delete_image(image_id)
        image_times.append(time.perf_counter() - began)
        assert store.get_image(image_id) is None
    target = targets.pop()
    began = time.perf_counter()
    erasure = store.delete_persona(target, erase_faces=True)
    persona_s = time.perf_counter() - began
    assert len(erasure.image_ids) == PERSONA_FACES and store.get_persona(target) is None
    return {"image": statistics.median(image_times), "image_max": max(image_times), "persona": persona_s,
            "persona_faces": len(erasure.face_ids)}


def measured_rounds() -> dict[str, dict[str, list[float]]]:
    """{store: {figure: [its value in each round]}}: every store filled, then rounds alternating."""
    with ExitStack() as stack:
        stores = backends(stack, "visage_bench_erasure")
        if NODES > 1 and (config := stack.enter_context(cluster(NODES, "visage_bench_erasure_nodes"))):
            stores[f"{NODES} nodes"] = stack.enter_context(fresh_keyspace(config))
        filled = {name: populate(name, store) for name, store in stores.items()}
        rounds = alternating({name: lambda name=name: erase_round(stores[name], *filled[name]) for name in stores})
    return {name: by_figure(values) for name, values in rounds.items()}


def main() -> None:
    """SQLite and the single node; with `python -m bench erasure --nodes 3` also the 3-node
    cluster (replication factor 3, the same cores), side by side."""
    results = measured_rounds()
    names = list(results)
    print(f"\nerasure with {FACES} faces stored ({FACES_PER_IMAGE}/image, all predicted); seconds, min / median / "
          f"max of {ROUNDS} rounds, the stores alternating; {load_average()}")
    header = "".join(f"{f'{name} s':>25}{'/target (median)':>17}" for name in names)
    print(f"{'operation':<64}{'target s':>9}{header}")
    faces = int(max(results["sqlite"]["persona_faces"]))
    rows = [(f"erase one image (median of {IMAGE_ERASURES} a round)", "image"),
            (f"erase a persona, {PERSONA_FACES} labelled faces + images ({faces} faces)", "persona")]
    for label, key in rows:
        target = TARGETS_S[key]
        cells = "".join(f"{spread(results[name][key], 4):>25}{statistics.median(results[name][key]) / target:>17.2f}"
                        for name in names)
        print(f"{label:<64}{target:>9.1f}{cells}")
    slowest = "".join(f"{spread(results[name]['image_max'], 4):>25}{'':>17}" for name in names)
    print(f"{'  slowest single-image erasure of a round':<64}{'':>9}{slowest}")
    if "cassandra" not in results:
        print("cassandra: n/a (no node; make cassandra-start)")
