"""FindSimilarFaces' index (visage_classifier.similar.FaceIndex) is exact: with its
projection pruning on (clustered faces, as real ones are) and mostly off (faces spread
evenly, where it prunes little and then scans all), its answers are a brute-force scan's, faces added
after loading and erased faces included."""
from __future__ import annotations

import numpy as np
import pytest

from tests.classifier.conftest import put_faces
from visage_classifier import similar
from visage_classifier.similar import FaceIndex


def brute_force(store, query: np.ndarray, count: int, exclude: str = "") -> dict[str, float]:
    """Every stored face's distance to the query (float64), the excluded one left out."""
    ids, rows = [], []
    for face_ids, matrix in store.iter_embeddings():
        ids += face_ids
        rows.append(matrix)
    distance = np.sqrt(((np.concatenate(rows).astype(np.float64) - query) ** 2).sum(axis=1))
    return {face_id: float(d) for face_id, d in zip(ids, distance) if face_id != exclude}


def assert_exact(got: list[tuple[str, float]], truth: dict[str, float], count: int) -> None:
    """The answer is the `count` nearest, nearest first, up to float32 rounding (a tie at
    the last place may go either way)."""
    best = sorted(truth.values())[:count]
    assert len(got) == count
    assert np.allclose([d for _, d in got], best, atol=1e-5)
    assert all(abs(truth[face_id] - d) < 1e-5 for face_id, d in got)


@pytest.mark.parametrize("spread", ["clustered", "even"])
def test_answers_are_a_brute_force_scans(sqlite_store, monkeypatch, spread):
    monkeypatch.setattr(similar, "PRUNE_MIN_FACES", 1000)
    rng = np.random.default_rng(7)
    if spread == "clustered":
        centres = rng.normal(0, 0.09, (200, 128))
        faces = centres[rng.integers(0, 200, 6000)] + rng.normal(0, 0.02, (6000, 128))
    else:
        faces = rng.normal(0, 0.09, (6000, 128))
    face_ids = put_faces(sqlite_store, faces.astype(np.float32), faces_per_image=500)
    index = FaceIndex(sqlite_store)
    index.load()
    assert index._basis is not None
    pruned = []
    original = FaceIndex._pruned
    monkeypatch.setattr(FaceIndex, "_pruned", staticmethod(
        lambda arrays, basis, q, count, skip: pruned.append((count, result := original(arrays, basis, q, count, skip)))
        or result))
    # Faces arriving after the load (projected with the same axes) and erased ones.
    later = put_faces(sqlite_store, (faces[:300] + rng.normal(0, 0.01, (300, 128))).astype(np.float32))
    for face_id in face_ids[:50:5]:
        sqlite_store.delete_face(face_id)
    index.catch_up()
    for query_row in rng.choice(len(faces), 40, replace=False):
        for count in (1, 10, 64):
            exclude = face_ids[query_row]
            got = index.nearest(faces[query_row], count, exclude=exclude)
            assert_exact(got, brute_force(sqlite_store, faces[query_row], count, exclude), count)
    assert set(later) <= set(index._row)
    pruning = [rows is not None for count, rows in pruned if count <= 10]  # within a cluster (~30 faces)
    if spread == "clustered":
        assert all(pruning)  # the projection did the work, and stayed exact
    else:
        assert not all(pruning)  # mostly it cannot prune here: then every face is scanned


def test_a_face_drawn_after_loading_is_found(sqlite_store):
    """A face drawn on a stored image (AddFace: FACE_ADDED) joins the index on the next catch-up."""
    from visage.store.records import FaceRecord

    [face_id] = put_faces(sqlite_store, np.random.default_rng(30).normal(0, 0.1, (1, 128)).astype(np.float32))
    index = FaceIndex(sqlite_store)
    index.load()
    image_id = sqlite_store.get_face(face_id).image_id
    embedding = np.full(128, 0.05, np.float32)
    drawn = sqlite_store.add_face(FaceRecord("", image_id, -1, (500, 500, 560, 560), [], embedding, b"", drawn_by="a"))
    index.catch_up()
    assert np.array_equal(index.embedding_of(drawn.face_id), embedding)
    assert len(index) == 2
