"""Unknown faces and changed-only writes (issue 15), on SQLite and on Cassandra (the node
of `make cassandra-start`):
1. ListUnknownFaces page latency through the unknown-faces index vs the scan it replaced
   (images newest first, 100 at a time, every label loaded, until the page is full): the
   first page and the next one, page size 50, for N faces of which 1 % are unknown (the
   scan's bad case: its cost grows with how rare unknown faces are). Both answer the same
   faces (checked). Each round: the p50 of CALLS calls of each, index and scan alternating.
2. Rows a re-classification writes after a one-label change (a new version whose one
   persona's centroid moved, as one more label moves it): changed-only writes vs the
   rewrite of every face the store did before (= faces evaluated). One change a round.
Each store is filled (and fully classified) once, then measured over BENCH_ROUNDS rounds
(bench.rounds): min / median / max.
N = BENCH_UNKNOWN_FACES (default 100,000; 10 faces per image)."""
from __future__ import annotations

import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm import tqdm

from bench.bench_classifier import activate_version
from bench.bench_store import on_cassandra, on_sqlite
from bench.rounds import ROUNDS, alternating, by_figure, load_average, p50_ms, ratios, spread
from visage import metrics
from visage.store.base import RECLASSIFIED_VERSION_KEY, Store, is_unknown
from visage.store.records import FaceRecord, ImageRecord
from visage.v1 import classify_pb2
from visage.v1 import resources_pb2 as pb
from visage_classifier.models import ActiveModel
from visage_classifier.reclassify import Reclassifier, follow
from visage_query.catalogue import Catalogue, LabelIndex, face_message

FACES = int(os.environ.get("BENCH_UNKNOWN_FACES", "100000"))
FACES_PER_IMAGE = 10
PERSONAS = 50
UNKNOWN_SHARE = 0.01
PAGE = 50
CALLS = 5  # calls of each page read a round (their p50 is the round's figure)
SCAN_BATCH = 100  # the scan's images per read, as it was


def scan_page(store: Store, image_offset: int, face_offset: int, limit: int):
    """The ListUnknownFaces read before the index (services/query/catalogue.py until issue 15)."""
    labels, hidden = LabelIndex.load(store), store.hidden_ids("face")
    version = Catalogue(store).current_version()
    found = []
    while images := store.list_images(image_offset, SCAN_BATCH):
        faces_of = store.faces_of_images(image.image_id for image in images if image.face_count)
        predictions = store.get_predictions(
            face.face_id for faces in faces_of.values() for face in faces if not labels.has_belongs(face.face_id))
        for image in images:
            faces = faces_of.get(image.image_id, [])
            for position in range(face_offset, len(faces)):
                face = faces[position]
                prediction = predictions.get(face.face_id)
                if face.face_id in hidden or not is_unknown(labels.of_face(face.face_id), prediction):
                    continue
                if len(found) == limit:
                    return found, (image_offset, position)
                found.append(face_message(face, labels.of_face(face.face_id), prediction, version))
            image_offset, face_offset = image_offset + 1, 0
    return found, None


def populate(name: str, store: Store) -> tuple[np.ndarray, list[str]]:
    """N faces near PERSONAS centres (1 % far from all: unknown), an active version, and its
    full re-classification (which leaves 1 % in the unknown-faces index)."""
    rng = np.random.default_rng(5)
    centres = rng.normal(0, 0.09, (PERSONAS, 128)).astype(np.float32)
    rows = (centres[rng.integers(0, PERSONAS, FACES)] + rng.normal(0, 0.02, (FACES, 128))).astype(np.float32)
    strangers = rng.random(FACES) < UNKNOWN_SHARE
    rows[strangers] = rng.normal(0, 1.0, (int(strangers.sum()), 128)).astype(np.float32)

    def put(start: int) -> int:
        image_id = uuid.uuid4().hex
        chunk = rows[start:start + FACES_PER_IMAGE]
        faces = [FaceRecord(f"{image_id}-{i}", image_id, i, (0, 0, 1, 1), [], row) for i, row in enumerate(chunk)]
        store.put_image(ImageRecord(image_id, "bench.jpg", "image/jpeg", 1, 1, 1, len(faces),
                                    pb.IMAGE_STATUS_FACES_FOUND, create_time=1e9 + start), b"", faces)
        return len(faces)

    with ThreadPoolExecutor(8) as pool, tqdm(total=FACES, desc=f"{name}: faces", unit="face") as bar:
        for count in pool.map(put, range(0, FACES, FACES_PER_IMAGE)):
            bar.update(count)
    persona_ids = [store.create_persona(f"person {i}").persona_id for i in range(PERSONAS)]
    activate_version(store, centres, persona_ids)
    reclassify(store)
    return centres, persona_ids


def reclassify(store: Store) -> tuple[int, int, float]:
    """A full re-classification with the active version: (faces evaluated, rows written, seconds)."""
    before = metrics.PREDICTIONS_WRITTEN._value.get()
    reclassifier = Reclassifier(store, ActiveModel(store))
    started = time.perf_counter()
    try:
        final = list(follow(reclassifier.start_or_join(shared=True), lambda: True))[-1]
    finally:
        reclassifier.stop()
    assert final.state == classify_pb2.RECLASSIFY_STATE_SUCCEEDED, final.message
    return final.done, int(metrics.PREDICTIONS_WRITTEN._value.get() - before), time.perf_counter() - started


def pages(store: Store) -> dict[str, list[float]]:
    """The first and the next page through the index and by the scan (checked to agree), p50 ms,
    index and scan alternating over the rounds."""
    catalogue = Catalogue(store)
    faces, last = catalogue.unknown_faces(None, PAGE)
    scanned, position = scan_page(store, 0, 0, PAGE)
    next_faces, _ = catalogue.unknown_faces(last, PAGE)
    next_scanned, _ = scan_page(store, *position, PAGE)
    assert [f.face_id for f in faces] == [f.face_id for f in scanned] and len(faces) == PAGE
    assert [f.face_id for f in next_faces] == [f.face_id for f in next_scanned]
    return {**alternating({"index_first": lambda: p50_ms(lambda: catalogue.unknown_faces(None, PAGE), CALLS),
                           "scan_first": lambda: p50_ms(lambda: scan_page(store, 0, 0, PAGE), CALLS)}),
            **alternating({"index_next": lambda: p50_ms(lambda: catalogue.unknown_faces(last, PAGE), CALLS),
                           "scan_next": lambda: p50_ms(lambda: scan_page(store, *position, PAGE), CALLS)})}


def measure(name: str, store: Store) -> dict:
    centres, persona_ids = populate(name, store)
    assert store.get_meta(RECLASSIFIED_VERSION_KEY)
    figures = pages(store)
    rng, changes = np.random.default_rng(9), []
    for round_ in range(ROUNDS):
        # One more label moves one persona's centroid a little: a new version, re-classified.
        centres = centres.copy()
        centres[round_ % PERSONAS] += rng.normal(0, 0.01, 128).astype(np.float32)
        activate_version(store, centres, persona_ids)
        evaluated, written, seconds = reclassify(store)
        changes.append({"evaluated": evaluated, "written": written, "seconds": seconds})
    return {**figures, **by_figure(changes), "unknown": sum(1 for _ in iter_unknown(store))}


def iter_unknown(store: Store):
    after = None
    while page := store.list_unknown_faces(after, 5000):
        yield from page
        after = page[-1]


def main() -> None:
    results = {"sqlite": on_sqlite(measure)}
    cassandra = on_cassandra(measure, "visage_bench_unknown")
    if cassandra:
        results["cassandra"] = cassandra
    print(f"\nListUnknownFaces, {FACES:,} faces ({FACES_PER_IMAGE} per image), "
          f"{next(iter(results.values()))['unknown']:,} unknown; page of {PAGE}; ms, min / median / max of {ROUNDS} "
          f"rounds (each the p50 of {CALLS} calls), index and scan alternating; {load_average()}")
    print(f"{'store':<11}{'page':<7}{'scan ms':>28}{'index ms':>24}{'scan/index':>22}")
    for name, r in results.items():
        for page in ("first", "next"):
            scan, index = r[f"scan_{page}"], r[f"index_{page}"]
            print(f"{name:<11}{page:<7}{spread(scan, 1):>28}{spread(index, 1):>24}{spread(ratios(scan, index), 1):>22}")
    print(f"\nRe-classification after a one-label change (one persona's centroid moved), {ROUNDS} changes one "
          "after another: min / median / max")
    print(f"{'store':<11}{'evaluated':>11}{'written before':>16}{'written now':>26}{'now/before':>24}{'run s':>20}")
    for name, r in results.items():
        evaluated = max(r["evaluated"])
        print(f"{name:<11}{evaluated:>11,}{evaluated:>16,}{spread(r['written'], 0):>26}"
              f"{spread(ratios(r['written'], [max(n, 1) for n in r['evaluated']]), 3):>24}{spread(r['seconds'], 1):>20}")
    print("(before: every evaluated face was rewritten with the new version; now only verdicts that change)")


if __name__ == "__main__":
    main()
