"""Visage vs the `face_recognition` package (issue 27): the tool a person would
script instead, on the same photos with the same number of processes.

A: face_recognition's own `face_locations` + `face_encodings` (HOG, upsample 1,
   5-point landmarks: its defaults) on every photo, in a pool of N worker
   processes started and warmed before the clock starts (as its CLI's --cpus).
B: Visage's ingest path: the IngestService with N pipeline workers, fed by
   IngestImages streams of 16 as `visage ingest` sends them, into a fresh SQLite
   store each round (images, faces, crops and embeddings all stored).

Rounds alternate A/B (ABBA...), so load from the shared machine's other work hits
both; ratios of medians are what to compare. Faces: every face face_recognition
finds must be found by Visage (boxes overlapping: IoU >= 0.5); the embeddings of
matched faces are compared with dlib's own noise (the distance between
face_recognition's embedding of a face and its embedding from the same photo
saved again as JPEG at quality 90: a change nobody can see).

Per-photo latency (p50/p95): face_recognition on one photo in one process vs one
Classify RPC to Visage's classifier (its pipeline pool, the model's answer).

Needs the bench extra (`make bench-setup`: matplotlib, face_recognition without
its dlib requirement: dlib-bin provides dlib). Settings: BENCH_ROUNDS (3, bench.rounds),
BENCH_VS_FR_PROCESSES (2), BENCH_VS_FR_SETS (shared,large)."""
from __future__ import annotations

import io
import json
import multiprocessing
import os
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.photo_sets import large_photos, megapixels, shared_photos
from bench.rounds import ROUNDS
from visage.auth import client as auth_client
from visage.config import Config
from visage.store import open_store
from visage.v1 import classify_pb2, classify_pb2_grpc, ingest_pb2, ingest_pb2_grpc

PROCESSES = int(os.environ.get("BENCH_VS_FR_PROCESSES", "2"))
SETS = os.environ.get("BENCH_VS_FR_SETS", "shared,large").split(",")
BATCH = 16  # images per IngestImages stream, as `visage ingest` sends them
SAME_FACE_IOU = 0.5
FIGURES = Path(__file__).resolve().parents[1] / "build/bench/vs_fr.json"  # read by bench.report

Box = tuple[int, int, int, int]  # left, top, right, bottom


@dataclass
class Faces:
    """What one side found in one photo."""
    boxes: list[Box] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)


@dataclass
class Run:
    seconds: float
    faces: dict[str, Faces]  # photo path -> faces
    per_photo: dict[str, float] = field(default_factory=dict)  # photo path -> seconds (face_recognition)


# ---- A: face_recognition ------------------------------------------------------
def _fr_load() -> None:
    import warnings
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # face_recognition_models' import
    import face_recognition  # noqa: F401 - loads its dlib models once per worker


def _fr_ready(_: int) -> int:
    return os.getpid()


def fr_analyze(path: str) -> tuple[str, float, Faces]:
    """face_recognition as its README uses it: load, locate, encode."""
    import face_recognition
    begin = time.perf_counter()
    image = face_recognition.load_image_file(path)
    locations = face_recognition.face_locations(image)
    encodings = face_recognition.face_encodings(image, locations)
    seconds = time.perf_counter() - begin
    boxes = [(left, top, right, bottom) for top, right, bottom, left in locations]
    return path, seconds, Faces(boxes, [np.asarray(e, np.float32) for e in encodings])


def run_face_recognition(paths: list[Path], processes: int) -> Run:
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes, initializer=_fr_load) as pool:
        pool.map(_fr_ready, range(processes * 4))  # every worker started and its models loaded
        begin = time.perf_counter()
        results = pool.map(fr_analyze, [str(p) for p in paths], chunksize=1)
        seconds = time.perf_counter() - begin
    return Run(seconds, {path: faces for path, _, faces in results}, {path: s for path, s, _ in results})


# ---- B: Visage ingest -----------------------------------------------------------
def run_visage_ingest(paths: list[Path], processes: int, data_root: Path) -> Run:
    from visage_ingest.server import start
    config = Config(data_dir=data_root / uuid.uuid4().hex[:8], workers=processes)
    store = open_store(config)
    service = start(config, store, "127.0.0.1:0")  # its pool's workers are started and warm here
    try:
        with auth_client.channel(f"127.0.0.1:{service.port}") as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            begin = time.perf_counter()
            results = []
            for first in range(0, len(paths), BATCH):
                batch = paths[first:first + BATCH]
                summary = stub.IngestImages(ingest_pb2.IngestImagesRequest(content=p.read_bytes(), filename=p.name)
                                            for p in batch)
                results += zip(batch, summary.results)
            seconds = time.perf_counter() - begin
        failed = [r.filename for _, r in results if r.outcome == ingest_pb2.INGEST_OUTCOME_FAILED]
        assert not failed, f"Visage failed on {failed}"
        faces = {}
        for path, result in results:
            stored = store.faces_of_image(result.image_id)
            faces[str(path)] = Faces([tuple(f.box) for f in stored], [np.asarray(f.embedding) for f in stored])
        return Run(seconds, faces)
    finally:
        service.stop(None)
        store.close()


# ---- comparing what each found ------------------------------------------------
def iou(a: Box, b: Box) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


@dataclass
class Match:
    fr_faces: int = 0
    visage_faces: int = 0
    missed: list[str] = field(default_factory=list)  # "photo box" face_recognition found and Visage did not
    distances: list[float] = field(default_factory=list)  # embedding distance of matched faces
    pairs: list[tuple[str, int, Box]] = field(default_factory=list)  # (photo, fr index, box) of matched faces


def match(fr: dict[str, Faces], visage: dict[str, Faces]) -> Match:
    result = Match()
    for path, theirs in fr.items():
        ours = visage.get(path, Faces())
        result.fr_faces += len(theirs.boxes)
        result.visage_faces += len(ours.boxes)
        for index, box in enumerate(theirs.boxes):
            overlaps = [iou(box, other) for other in ours.boxes]
            best = int(np.argmax(overlaps)) if overlaps else -1
            if best < 0 or overlaps[best] < SAME_FACE_IOU:
                result.missed.append(f"{Path(path).name} {box}")
                continue
            result.distances.append(float(np.linalg.norm(theirs.embeddings[index] - ours.embeddings[best])))
            result.pairs.append((path, index, box))
    return result


def dlib_noise(pairs: list[tuple[str, int, Box]], fr: dict[str, Faces]) -> list[float]:
    """face_recognition's embedding of each face vs the same face (same box) in the
    photo saved again as JPEG quality 90."""
    import face_recognition
    from PIL import Image
    distances = []
    by_photo: dict[str, list[tuple[int, Box]]] = {}
    for path, index, box in pairs:
        by_photo.setdefault(path, []).append((index, box))
    for path, faces in by_photo.items():
        buffer = io.BytesIO()
        Image.open(path).convert("RGB").save(buffer, format="JPEG", quality=90)
        image = face_recognition.load_image_file(io.BytesIO(buffer.getvalue()))
        locations = [(top, right, bottom, left) for _, (left, top, right, bottom) in faces]
        for (index, _), encoding in zip(faces, face_recognition.face_encodings(image, locations)):
            distances.append(float(np.linalg.norm(fr[path].embeddings[index] - encoding)))
    return distances


# ---- per-photo latency ----------------------------------------------------------
def classify_latencies(paths: list[Path], processes: int, data_root: Path) -> list[float]:
    from visage_classifier.server import start
    config = Config(data_dir=data_root / uuid.uuid4().hex[:8], workers=processes)
    store = open_store(config)
    service = start(config, store, "127.0.0.1:0", watch_events=False)
    try:
        with auth_client.channel(f"127.0.0.1:{service.port}") as channel:
            stub = classify_pb2_grpc.ClassifyServiceStub(channel)
            stub.Classify(classify_pb2.ClassifyRequest(content=paths[0].read_bytes()))  # warm the channel
            latencies = []
            for path in paths:
                content = path.read_bytes()
                begin = time.perf_counter()
                stub.Classify(classify_pb2.ClassifyRequest(content=content))
                latencies.append(time.perf_counter() - begin)
            return latencies
    finally:
        service.stop(None)
        store.close()


def fr_latencies(paths: list[Path]) -> list[float]:
    """One photo at a time in this process (models loaded first)."""
    _fr_load()
    return [fr_analyze(str(path))[1] for path in paths]


# ---- the table ---------------------------------------------------------------------
def spread(values: list[float]) -> str:
    return f"{min(values):7.2f} {statistics.median(values):7.2f} {max(values):7.2f}"


def percentiles(seconds: list[float]) -> tuple[float, float]:
    return float(np.percentile(seconds, 50)) * 1000, float(np.percentile(seconds, 95)) * 1000


def compare_set(name: str, paths: list[Path], data_root: Path) -> dict:
    """Alternating rounds on one photo set; prints its table and returns its figures (for the report)."""
    sizes = [megapixels(p) for p in paths]
    print(f"\n[{name}] {len(paths)} photos, median {statistics.median(sizes):.2f} MP, up to {max(sizes):.1f} MP; "
          f"{PROCESSES} processes each side; load average {os.getloadavg()[0]:.2f}", flush=True)
    fr_rates, visage_rates, ratios = [], [], []
    fr_run = visage_run = None
    for round_ in range(ROUNDS):
        order = ("fr", "visage") if round_ % 2 == 0 else ("visage", "fr")
        for side in order:
            if side == "fr":
                fr_run = run_face_recognition(paths, PROCESSES)
            else:
                visage_run = run_visage_ingest(paths, PROCESSES, data_root)
        fr_rates.append(len(paths) / fr_run.seconds)
        visage_rates.append(len(paths) / visage_run.seconds)
        ratios.append(visage_rates[-1] / fr_rates[-1])
        print(f"  round {round_ + 1} ({'/'.join(order)}): face_recognition {fr_rates[-1]:.2f} photos/s, "
              f"Visage {visage_rates[-1]:.2f} photos/s, ratio {ratios[-1]:.2f}x; load {os.getloadavg()[0]:.2f}",
              flush=True)
    found = match(fr_run.faces, visage_run.faces)
    noise = dlib_noise(found.pairs, fr_run.faces)
    print(f"  {'photos/s':<28} {'min':>7} {'median':>7} {'max':>7}")
    print(f"  {'face_recognition':<28} {spread(fr_rates)}")
    print(f"  {'Visage ingest (stored)':<28} {spread(visage_rates)}")
    print(f"  {'ratio Visage / fr':<28} {spread(ratios)}   (target >= 1.30x, median)")
    print(f"  faces: face_recognition {found.fr_faces}, Visage {found.visage_faces}; of face_recognition's, "
          f"Visage found {found.fr_faces - len(found.missed)} (missed: {found.missed or 'none'})")
    if found.distances:
        print(f"  embedding distance Visage vs fr, matched faces: median {statistics.median(found.distances):.4f}, "
              f"p95 {np.percentile(found.distances, 95):.4f}, max {max(found.distances):.4f}")
        print(f"  dlib's noise (fr vs fr on the photo re-saved as JPEG q90): median {statistics.median(noise):.4f}, "
              f"p95 {np.percentile(noise, 95):.4f}, max {max(noise):.4f}; same-person limit 0.6")
    return {"name": name, "paths": paths, "sizes": sizes, "fr_rates": fr_rates, "visage_rates": visage_rates,
            "ratios": ratios, "match": found, "noise": noise,
            "fr_seconds": [fr_run.per_photo[str(p)] for p in paths]}


def compare_latency(paths: list[Path], data_root: Path) -> dict:
    """Per-photo latency, alternating which side goes first each round."""
    print(f"\n[latency] one photo at a time, {len(paths)} photos x {ROUNDS} rounds; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    fr_all, visage_all, p50_ratios, p95_ratios = [], [], [], []
    for round_ in range(ROUNDS):
        runs = {}
        for side in (("fr", "visage") if round_ % 2 == 0 else ("visage", "fr")):
            runs[side] = fr_latencies(paths) if side == "fr" else classify_latencies(paths, PROCESSES, data_root)
        fr_all += runs["fr"]
        visage_all += runs["visage"]
        (fr50, fr95), (v50, v95) = percentiles(runs["fr"]), percentiles(runs["visage"])
        p50_ratios.append(fr50 / v50)
        p95_ratios.append(fr95 / v95)
        print(f"  round {round_ + 1}: face_recognition p50 {fr50:.0f} ms p95 {fr95:.0f} ms; Visage Classify RPC "
              f"p50 {v50:.0f} ms p95 {v95:.0f} ms; load {os.getloadavg()[0]:.2f}", flush=True)
    print(f"  {'fr / Visage (speed-up)':<28} {'min':>7} {'median':>7} {'max':>7}")
    print(f"  {'p50':<28} {spread(p50_ratios)}")
    print(f"  {'p95':<28} {spread(p95_ratios)}")
    return {"fr": fr_all, "visage": visage_all, "p50_ratios": p50_ratios, "p95_ratios": p95_ratios,
            "sizes": [megapixels(p) for p in paths] * ROUNDS}  # the photo of each time, both sides


def main() -> dict:
    """Prints the tables and writes the figures for the report (bench.report) to FIGURES."""
    sets = {"shared": shared_photos, "large": large_photos}
    figures = {"load_average": os.getloadavg(), "cores": os.cpu_count(), "processes": PROCESSES,
               "rounds": ROUNDS, "sets": [], "latency": None}
    with tempfile.TemporaryDirectory(prefix="bench-vs-fr-") as tmp:
        for name in SETS:
            figures["sets"].append(compare_set(name, sets[name](), Path(tmp)))
        figures["latency"] = compare_latency(shared_photos(), Path(tmp))
    FIGURES.parent.mkdir(parents=True, exist_ok=True)
    FIGURES.write_text(json.dumps(figures, default=_plain, indent=1))
    return figures


def _plain(value):
    """JSON for the figures' paths, matches and numpy numbers."""
    if isinstance(value, Path):
        return value.name
    if isinstance(value, Match):
        return {"fr_faces": value.fr_faces, "visage_faces": value.visage_faces, "missed": value.missed,
                "distances": value.distances}
    return float(value)


if __name__ == "__main__":
    main()
