"""Suggested people (visage.clustering): quality and speed.

Quality: every face of the shared photos, no labels, clustered; scored against
the folder names (bbt/<name>, presidents/<name>; each noise/ file is a person of
its own; faces in scenes/ and edge/ have no folder truth, so they are clustered
but not scored). Purity: share of scored faces in a group whose majority is
their own person. Completeness: share of each person's faces in that person's
largest group. Coverage: share of scored faces put in any group.

Speed: synthetic dlib-like embeddings (people of 20-80 faces, 10 % strangers);
the baseline is one HDBSCAN over every face (quadratic: run at sizes it
survives), the candidate the partitioned clustering the query service runs.
Target: 100k faces < 30 s. The last row is what the query service does after
an event: read the unknown faces from a SQLite store, then cluster them.
Each time is taken over BENCH_ROUNDS rounds (candidate and baseline alternating,
bench.rounds), at each size of VISAGE_BENCH_CLUSTER_SIZES: the scale curve of
build/bench/clusters.json (bench.report)."""
from __future__ import annotations

import os
import statistics
import time
from collections import Counter, defaultdict

import numpy as np

from bench.report import save_figures
from bench.rounds import ROUNDS, alternating, load_average, spread
from visage import clustering

SIZES = [int(size) for size in os.environ.get("VISAGE_BENCH_CLUSTER_SIZES", "5000,20000,100000").split(",")]
BASELINE_MAX = 20_000  # one HDBSCAN over more faces takes minutes


def shared_faces() -> tuple[list[str], np.ndarray]:
    """(truth per face, embeddings) of every face in the shared photos."""
    from bench.bench_ingest import shared_images
    from visage.config import Config
    from visage.faces.pipeline import FacePipeline
    from visage.faces.settings import FaceSettings
    pipeline = FacePipeline(Config(), FaceSettings.from_env())
    truths, embeddings = [], []
    for name, content in shared_images():
        for face in pipeline.analyze(content).faces:
            truths.append(folder_truth(name))
            embeddings.append(face.embedding)
    return truths, np.stack(embeddings)


def folder_truth(relative_path: str) -> str:
    """The person a file's folder names, "" when the folder names nobody."""
    parts = relative_path.split("/")
    if parts[0] in ("bbt", "presidents") and len(parts) == 3:
        return parts[1]
    if parts[0] == "noise":
        return relative_path  # every stranger is somebody else
    return ""


def scores(truths: list[str], labels: np.ndarray) -> dict[str, float]:
    scored = [i for i, truth in enumerate(truths) if truth]
    groups: dict[int, list[str]] = defaultdict(list)
    for i in scored:
        if labels[i] >= 0:
            groups[labels[i]].append(truths[i])
    in_majority = sum(Counter(members).most_common(1)[0][1] for members in groups.values())
    clustered = sum(len(members) for members in groups.values())
    per_person: dict[str, Counter] = defaultdict(Counter)
    for i in scored:
        per_person[truths[i]][labels[i] if labels[i] >= 0 else ("alone", i)] += 1
    largest = sum(max(counts.values()) for counts in per_person.values())
    return {"purity": in_majority / clustered if clustered else 0.0,
            "completeness": largest / len(scored),
            "coverage": clustered / len(scored),
            "groups": len(set(labels[labels >= 0].tolist()))}


def synthetic(count: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """dlib-like embeddings: people ~1.0 apart, their faces ~0.4 apart; 10 % strangers."""
    rng = np.random.default_rng(seed)
    strangers = count // 10
    sizes = []
    while sum(sizes) < count - strangers:
        sizes.append(int(rng.integers(20, 81)))
    sizes[-1] -= sum(sizes) - (count - strangers)
    centres = rng.normal(0, 0.0625, (len(sizes) + strangers, 128)).astype(np.float32)
    truth = np.concatenate([np.repeat(np.arange(len(sizes)), sizes), len(sizes) + np.arange(strangers)])
    embeddings = centres[truth] + rng.normal(0, 0.025, (count, 128)).astype(np.float32)
    return embeddings, truth


def from_store(count: int) -> dict:
    """Seconds to read the unknown faces and to cluster them, each round, for a SQLite
    store holding `count` unknown faces, as the query service reads them."""
    import tempfile
    from pathlib import Path

    from visage.store.records import FaceRecord, ImageRecord
    from visage.store.sqlite import SqliteStore
    from visage.v1 import resources_pb2 as pb
    from visage_query.clusters import unknown_embeddings
    embeddings, _truth = synthetic(count)
    result: dict = {"faces": count, "read": [], "cluster": [], "groups": 0}
    with tempfile.TemporaryDirectory() as folder:
        store = SqliteStore(Path(folder) / "bench.db")
        store.migrate()
        per_image = 100
        for first in range(0, count, per_image):
            image_id = f"{first:064d}"
            faces = [FaceRecord(f"{image_id}-{i}", image_id, i, (0, 0, 1, 1), [], embeddings[first + i])
                     for i in range(min(per_image, count - first))]
            store.put_image(ImageRecord(image_id, f"{first}.jpg", "image/jpeg", 1, 1, 1, len(faces),
                                        pb.IMAGE_STATUS_FACES_FOUND), b"x", faces)
        for _ in range(ROUNDS):
            (face_ids, unknown), read_seconds = timed(unknown_embeddings, store)
            found, cluster_seconds = timed(clustering.clusters, face_ids, unknown)
            result["read"].append(read_seconds)
            result["cluster"].append(cluster_seconds)
            result["groups"] = len(found)
        store.close()
    return result


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def scale_row(size: int) -> dict:
    """Partitioned clustering and (where it survives) one HDBSCAN, alternating, on `size` faces."""
    data, truth = synthetic(size)
    labels = []

    def partitioned() -> float:
        found, seconds = timed(clustering.cluster_embeddings, data)
        labels[:] = [found]
        return seconds

    sides = {"partitioned": partitioned}
    if size <= BASELINE_MAX:
        sides["baseline"] = lambda: timed(clustering._hdbscan, data)[1]
    row = {"faces": size, "baseline": [], **alternating(sides)}
    quality = scores([str(t) for t in truth.tolist()], labels[0])
    return {**row, "purity": quality["purity"], "completeness": quality["completeness"]}


def main() -> None:
    truths, embeddings = shared_faces()
    labels = clustering.cluster_embeddings(embeddings)
    quality = scores(truths, labels)
    print(f"shared photos: {len(truths)} faces, {sum(map(bool, truths))} with folder truth, "
          f"{quality['groups']} suggested people")
    print(f"  purity {quality['purity']:.3f}  completeness {quality['completeness']:.3f}  "
          f"coverage {quality['coverage']:.3f}")
    print(f"\nseconds, min / median / max of {ROUNDS} rounds (partitioned and one HDBSCAN alternating); "
          f"{load_average()}")
    print(f"{'faces':>8} {'baseline: one HDBSCAN':>24} {'partitioned':>20} {'speed-up':>9} {'purity':>7} "
          f"{'complete':>9} {'load':>5}")
    rows = []
    for size in SIZES:
        row = scale_row(size)
        rows.append(row)
        baseline, ratio = "skipped (quadratic)", ""
        if row["baseline"]:
            baseline = spread(row["baseline"], 1)
            ratio = f"{statistics.median(row['baseline']) / statistics.median(row['partitioned']):.1f}x"
        print(f"{size:>8} {baseline:>24} {spread(row['partitioned'], 1):>20} {ratio:>9} {row['purity']:>7.3f} "
              f"{row['completeness']:>9.3f} {os.getloadavg()[0]:>5.1f}", flush=True)
    service = from_store(max(SIZES))
    print(f"\nquery service path, {service['faces']} unknown faces in SQLite: read {spread(service['read'], 1)} s + "
          f"cluster {spread(service['cluster'], 1)} s ({service['groups']} groups)")
    print("target: 100k faces < 30 s")
    save_figures("clusters", {"rounds": ROUNDS, "baseline_max": BASELINE_MAX, "sizes": rows, "service": service,
                              "quality": {**quality, "faces": len(truths)}})
