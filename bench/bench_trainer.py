"""Trainer bench: label -> new active version latency at 1k, 10k and 100k
labelled faces (synthetic clustered embeddings, 100 faces per persona, SQLite
store, the trainer service in-process with its default 1 s debounce), and the
job's training time vs a plain in-process scikit-learn fit of the same data
(NearestCentroid, the same algorithm, on an in-memory array).
The 1M faces / 10k personas row fits and evaluates the model in memory
(streamed into the accumulator, no store) and extrapolates store reading
linearly from the 100k run; it says so in the table.
Each size: one store, BENCH_ROUNDS labels one after another (bench.rounds: each
label's latency and its job's training time, alternating with the sklearn fit),
shown as min / median / max."""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.neighbors import NearestCentroid

from bench.rounds import ROUNDS, alternating, load_average, spread
from visage import model as modelling
from visage.config import Config
from visage.store.records import FaceRecord, ImageRecord, LabelRecord
from visage.store.sqlite import SqliteStore
from visage.v1 import resources_pb2 as pb
from visage_trainer.server import start
from visage_trainer.training import TrainerSettings

FACES_PER_PERSONA = 100
SIZES = (1_000, 10_000, 100_000)


def synthetic(faces: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clustered Gaussians: persona centres ~0.9 apart, faces ~0.3 from their centre (like dlib)."""
    rng = np.random.default_rng(seed)
    personas = max(1, faces // FACES_PER_PERSONA)
    centres = rng.normal(scale=0.9 / np.sqrt(2 * 128), size=(personas, 128)).astype(np.float32)
    y = np.arange(faces) % personas
    return centres[y] + rng.normal(scale=0.3 / np.sqrt(128), size=(faces, 128)).astype(np.float32), y


def fill_labelled(store: SqliteStore, X: np.ndarray, y: np.ndarray,
                  unlabelled: int) -> tuple[list[str], list[str]]:
    """Stores X as faces (1000 per image) and y's personas; labels all but the last
    `unlabelled` faces. Returns (face ids, persona ids)."""
    persona_ids = [store.create_persona(f"persona {k}").persona_id for k in range(int(y.max()) + 1)]
    face_ids = []
    for start_row in range(0, len(X), 1000):
        image_id = f"{start_row:064x}"
        faces = [FaceRecord(f"{image_id}-{i}", image_id, i, (0, 0, 1, 1), [], e)
                 for i, e in enumerate(X[start_row:start_row + 1000])]
        store.put_image(ImageRecord(image_id, "synthetic", "image/png", 1, 1, 1, len(faces),
                                    pb.IMAGE_STATUS_FACES_FOUND), b"", faces)
        face_ids += [f.face_id for f in faces]
    for face_id, k in zip(face_ids[:-unlabelled], y[:-unlabelled]):
        store.put_label(LabelRecord(face_id, persona_ids[k], pb.VERDICT_BELONGS))
    return face_ids, persona_ids


def fill_store(store: SqliteStore, X: np.ndarray, y: np.ndarray) -> list[tuple[str, str]]:
    """fill_labelled with the last ROUNDS faces left unlabelled: [(such a face, its persona)]."""
    face_ids, persona_ids = fill_labelled(store, X, y, ROUNDS)
    return [(face_ids[i], persona_ids[y[i]]) for i in range(len(X) - ROUNDS, len(X))]


def wait_active(store, version: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while (active := store.active_model_version()) is None or active.version != version:
        if time.monotonic() > deadline:
            raise RuntimeError(f"version {version} not active; jobs {store.list_training_jobs(3)}")
        time.sleep(0.01)


def measure(faces: int) -> dict:
    X, y = synthetic(faces)
    train: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        config = Config(data_dir=Path(tmp))
        store = SqliteStore(config.sqlite_path)
        store.migrate()
        unlabelled = fill_store(store, X, y)
        service = start(config, store, "127.0.0.1:0", TrainerSettings.from_env())
        try:
            wait_active(store, 1)  # everything but the last ROUNDS labels

            def label_to_active() -> float:
                face_id, persona_id = unlabelled.pop()
                version = store.active_model_version().version + 1
                began = time.perf_counter()
                store.put_label(LabelRecord(face_id, persona_id, pb.VERDICT_BELONGS))
                wait_active(store, version)
                latency = time.perf_counter() - began
                train.append(store.active_model_version().lineage["training_seconds"])
                return latency

            seconds = alternating({"latency": label_to_active, "sklearn": lambda: sklearn_fit(X, y)})
            record = store.active_model_version()
        finally:
            service.stop(0)
            store.close()
    return {"faces": faces, "personas": int(y.max()) + 1, "latency": seconds["latency"], "train": train,
            "sklearn": seconds["sklearn"], "accuracy": record.metrics["accuracy"],
            "unknown": record.metrics["unknown_rejection_rate"]}


def sklearn_fit(X: np.ndarray, y: np.ndarray) -> float:
    began = time.perf_counter()
    NearestCentroid().fit(X, y)
    return time.perf_counter() - began


def estimate_million(measured_100k: dict) -> dict:
    """1M faces / 10k personas: model fit + evaluation + export measured in
    memory; store reading extrapolated linearly from the 100k run."""
    faces, personas = 1_000_000, 10_000
    accumulator = modelling.LabelAccumulator(faces)
    rng = np.random.default_rng(1)
    centres = rng.normal(scale=0.9 / np.sqrt(2 * 128), size=(personas, 128)).astype(np.float32)
    ids = [f"p{k}" for k in range(personas)]
    began = time.perf_counter()
    for start_row in range(0, faces, 50_000):
        y = np.arange(start_row, start_row + 50_000) % personas
        X = centres[y] + rng.normal(scale=0.3 / np.sqrt(128), size=(len(y), 128)).astype(np.float32)
        accumulator.add_belonging([f"f{i}" for i in range(start_row, start_row + len(y))], [ids[k] for k in y], X)
    trained = modelling.fit_and_evaluate(accumulator)
    modelling.export_onnx(trained.model)
    model_seconds = time.perf_counter() - began
    reading = max(measured_100k["train"]) * 10  # upper bound: the whole 100k job scaled, reading dominates it
    return {"faces": faces, "personas": personas, "model": model_seconds, "estimate": model_seconds + reading + 1.0,
            "accuracy": trained.metrics["accuracy"]}


def main() -> None:
    print(f"seconds, min / median / max of {ROUNDS} labels (each alternating with the sklearn fit); "
          f"{load_average()}")
    print(f"{'faces':>9} {'personas':>8} {'label->active s':>20} {'job train s':>20} {'sklearn fit s':>22} "
          f"{'ratio':>7} {'accuracy':>8} {'unknown':>7}")
    rows = []
    for faces in SIZES:
        row = measure(faces)
        rows.append(row)
        ratio = statistics.median(row["train"]) / statistics.median(row["sklearn"])
        print(f"{row['faces']:>9} {row['personas']:>8} {spread(row['latency']):>20} {spread(row['train']):>20} "
              f"{spread(row['sklearn'], 4):>22} {ratio:>7.0f}x {row['accuracy']:>8.3f} {row['unknown']:>7.3f}",
              flush=True)
    million = estimate_million(rows[-1])
    print(f"{million['faces']:>9} {million['personas']:>8} {million['estimate']:>19.1f}* "
          f"  (*estimate: fit+evaluate+export measured in memory {million['model']:.1f} s, "
          f"accuracy {million['accuracy']:.3f}; + store reading extrapolated x10 from 100k's slowest job; "
          "+ 1 s debounce)")
    print("latency includes the default debounce (VISAGE_TRAIN_DEBOUNCE_SECONDS=1); target < 3 s at 10k")


if __name__ == "__main__":
    main()
