"""FindSimilarFaces: the stored faces nearest a query face, by an exact scan.

Method: every stored embedding is held in memory (float32 [n, 128] plus the squared norms:
~0.5 GiB at 1M faces), loaded once with Store.iter_embeddings on first use and then kept
current from the event log (IMAGE_INGESTED adds the image's faces, ERASED drops the erased
face ids), read at each query from the index's own cursor. A query is one matrix-vector
product over the rows the filters leave (a persona filter scans only its labelled faces)
and an argpartition for the page; exact, so the same on both stores. The store has the last
word: the faces of a page are read back (get_faces) before they are answered, so a face
erased after the index last caught up is never returned, and labels and hidden flags are
read from the store at query time, never cached."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np

from visage.errors import InvalidArgument
from visage.model import distance_to_confidence
from visage.paging import decode_token, encode_token, page_size
from visage.store.base import Store
from visage.store.records import EMBEDDING_DIM, FaceRecord
from visage.v1 import resources_pb2 as pb

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 10, 100
MAX_OFFSET = 10_000  # deeper pages than this are refused (a scan of the nearest 10k at most)
EVENT_PAGE = 1000
LOAD_BATCH = 65536
PRUNE_MIN_FACES = 50_000  # below this a full scan is fast enough
PROJECTED_DIM = 32
PROBE = 256               # nearest by projection whose true distances bound the answer
BASIS_SAMPLE = 20_000
BOUND_MARGIN = 1e-3       # squared distance


@dataclass(frozen=True)
class Filters:
    persona_id: str = ""
    unlabelled_only: bool = False
    exclude_hidden: bool = False

    def scope(self, query: str) -> str:
        """The paging scope: a token is only valid for the same query and filters."""
        return f"similar/{query}/{self.persona_id}/{int(self.unlabelled_only)}{int(self.exclude_hidden)}"


@dataclass(frozen=True)
class Neighbour:
    face: FaceRecord
    distance: float
    persona_id: str  # labelled as belonging to ("" none)

    @property
    def confidence(self) -> float:
        return float(distance_to_confidence(self.distance))


@dataclass(frozen=True)
class Arrays:
    """One consistent snapshot of the index (replaced as a whole; a query reads one)."""
    matrix: np.ndarray        # [n, 128] float32
    norms: np.ndarray         # [n] squared norms
    alive: np.ndarray         # [n] False once erased (flipped in place)
    projected: np.ndarray | None = None  # [n, PROJECTED_DIM]: matrix @ basis (None: no basis yet)
    projected_norms: np.ndarray | None = None

    @classmethod
    def empty(cls) -> "Arrays":
        return cls(np.zeros((0, EMBEDDING_DIM), np.float32), np.zeros(0, np.float32), np.zeros(0, bool))


class FaceIndex:
    """The stored embeddings, in memory, kept current from the event log (see the module).

    A query is exact. Over all faces, at PRUNE_MIN_FACES and more, it first scans a
    projection of the embeddings on PROJECTED_DIM orthonormal directions (the top principal
    axes of the faces loaded: a quarter of the bytes to read). A projected distance is never
    more than the true one (an orthonormal projection shrinks every difference), so once the
    true distances of the nearest by projection bound the answer (the count-th smallest,
    tau), only faces whose projected distance is within tau can be nearer, and only they are
    compared in full. Where the projection prunes little, the full scan is taken instead."""

    def __init__(self, store: Store):
        self._store = store
        self._lock = threading.Lock()  # one catch-up at a time; readers take a snapshot
        self._cursor: str | None = None
        self._ids: list[str] = []
        self._row: dict[str, int] = {}
        self._basis: np.ndarray | None = None  # [128, PROJECTED_DIM] orthonormal columns
        self._arrays = Arrays.empty()

    def __len__(self) -> int:
        return int(self._arrays.alive.sum())

    def load(self) -> None:
        """Reads every stored embedding (the cursor is taken first: what lands meanwhile is
        read again from the log, and adding a face twice is a no-op)."""
        with self._lock:
            cursor = self._store.latest_cursor()
            ids: list[str] = []
            blocks = []
            for face_ids, matrix in self._store.iter_embeddings(LOAD_BATCH):
                ids += face_ids
                blocks.append(np.asarray(matrix, np.float32))
            matrix = np.concatenate(blocks) if blocks else np.zeros((0, EMBEDDING_DIM), np.float32)
            self._ids, self._row, self._arrays = [], {}, Arrays.empty()
            self._basis = principal_axes(matrix) if len(matrix) >= PRUNE_MIN_FACES else None
            self._add(ids, matrix)
            self._cursor = cursor

    def catch_up(self) -> None:
        if self._cursor is None:
            self.load()
            return
        with self._lock:
            cursor = self._cursor
            ingested: list[str] = []
            erased: set[str] = set()
            while events := self._store.read_events(cursor, EVENT_PAGE):
                cursor = events[-1].cursor
                for event in events:
                    if event.type == pb.EVENT_TYPE_IMAGE_INGESTED:
                        ingested.append(event.subject)
                    elif event.type == pb.EVENT_TYPE_FACE_ADDED:  # a face drawn on an image (added once: _add)
                        ingested.append(event.attributes.get("image_id", ""))
                    elif event.type == pb.EVENT_TYPE_ERASED:
                        erased.update(filter(None, event.attributes.get("face_ids", "").split(",")))
            if ingested:
                faces = [face for image_faces in self._store.faces_of_images(dict.fromkeys(ingested)).values()
                         for face in image_faces]
                faces = [face for face in faces if face.face_id not in erased]
                if faces:
                    self._add([face.face_id for face in faces],
                              np.stack([np.asarray(face.embedding, np.float32) for face in faces]))
            for face_id in erased:
                row = self._row.pop(face_id, None)
                if row is not None:
                    self._arrays.alive[row] = False
            self._cursor = cursor

    def _add(self, face_ids: list[str], matrix: np.ndarray) -> None:
        fresh = [i for i, face_id in enumerate(face_ids) if face_id not in self._row]
        if not fresh:
            return
        start = len(self._ids)
        rows = np.ascontiguousarray(matrix[fresh], np.float32)
        for offset, i in enumerate(fresh):
            self._row[face_ids[i]] = start + offset
            self._ids.append(face_ids[i])
        # Copy-on-append: a reader holding the old arrays keeps a consistent snapshot.
        old = self._arrays
        projected = projected_norms = None
        if self._basis is not None:
            rows_projected = rows @ self._basis
            projected = np.concatenate([old.projected, rows_projected]) if old.projected is not None \
                else rows_projected
            norms = np.einsum("ij,ij->i", rows_projected, rows_projected)
            projected_norms = np.concatenate([old.projected_norms, norms]) if old.projected_norms is not None \
                else norms
        self._arrays = Arrays(np.concatenate([old.matrix, rows]),
                              np.concatenate([old.norms, np.einsum("ij,ij->i", rows, rows)]),
                              np.concatenate([old.alive, np.ones(len(fresh), bool)]), projected, projected_norms)

    def embedding_of(self, face_id: str) -> np.ndarray | None:
        row = self._row.get(face_id)
        return None if row is None else self._arrays.matrix[row]

    def nearest(self, query: np.ndarray, count: int, rows: np.ndarray | None = None,
                exclude: str = "") -> list[tuple[str, float]]:
        """The `count` nearest live faces (of `rows` when given), nearest first (ties by id)."""
        arrays, ids, basis = self._arrays, self._ids, self._basis  # one snapshot (ids only grow)
        q = np.asarray(query, np.float32).reshape(EMBEDDING_DIM)
        skip = self._row.get(exclude) if exclude else None
        if rows is None:
            rows = self._pruned(arrays, basis, q, count, skip)
        if rows is None:  # every face: one pass over the whole matrix, no copy
            d2 = arrays.norms - 2.0 * (arrays.matrix @ q) + float(q @ q)
            d2[~arrays.alive] = np.inf
            if skip is not None:
                d2[skip] = np.inf
        else:
            rows = rows[arrays.alive[rows]]
            if skip is not None:
                rows = rows[rows != skip]
            d2 = arrays.norms[rows] - 2.0 * (arrays.matrix[rows] @ q) + float(q @ q)
        count = min(count, len(d2))
        if count <= 0:
            return []
        top = np.argpartition(d2, count - 1)[:count] if count < len(d2) else np.arange(len(d2))
        top = top[np.isfinite(d2[top])]
        row_of = (lambda i: i) if rows is None else (lambda i: int(rows[i]))
        order = sorted(top.tolist(), key=lambda i: (d2[i], ids[row_of(i)]))
        return [(ids[row_of(i)], float(np.sqrt(max(d2[i], 0.0)))) for i in order]

    @staticmethod
    def _pruned(arrays: Arrays, basis: np.ndarray | None, q: np.ndarray, count: int,
                skip: int | None) -> np.ndarray | None:
        """The rows that may hold the `count` nearest (see the class), or None: scan them all."""
        n = len(arrays.matrix)
        if basis is None or arrays.projected is None or len(arrays.projected) != n or count * 64 > n:
            return None
        pq = q @ basis
        bound = arrays.projected_norms - 2.0 * (arrays.projected @ pq) + float(pq @ pq)
        bound[~arrays.alive] = np.inf
        if skip is not None:
            bound[skip] = np.inf
        first = np.argpartition(bound, PROBE - 1)[:PROBE]
        first = first[np.isfinite(bound[first])]
        if len(first) < count:
            return None
        exact = arrays.norms[first] - 2.0 * (arrays.matrix[first] @ q) + float(q @ q)
        tau = float(np.partition(exact, count - 1)[count - 1])
        # Float32 rounding of both sums: a margin far above it, far below real gaps.
        within = np.flatnonzero(bound <= tau + BOUND_MARGIN)
        return within if len(within) * 4 < n else None

    def rows_of(self, face_ids) -> np.ndarray:
        return np.array(sorted({self._row[f] for f in face_ids if f in self._row}), np.int64)


def principal_axes(matrix: np.ndarray, dims: int = 0) -> np.ndarray:
    """[128, dims] orthonormal columns: the top principal axes of (a sample of) the rows."""
    dims = dims or PROJECTED_DIM
    sample = matrix[np.random.default_rng(0).choice(len(matrix), min(len(matrix), BASIS_SAMPLE), replace=False)]
    centred = (sample - sample.mean(axis=0)).astype(np.float64)
    _, vectors = np.linalg.eigh(centred.T @ centred)
    basis, _ = np.linalg.qr(vectors[:, ::-1][:, :dims])  # re-orthonormalised in float64
    return np.ascontiguousarray(basis, np.float32)


def find_similar(store: Store, index: FaceIndex, query: np.ndarray, filters: Filters, query_key: str,
                 requested_size: int, token: str, exclude: str = "") -> tuple[list[Neighbour], str]:
    """One page of the nearest stored faces passing the filters, and the next page's token."""
    size = page_size(requested_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    scope = filters.scope(query_key)
    offset, = decode_token(token, scope, 1)
    if offset > MAX_OFFSET:
        raise InvalidArgument(f"FindSimilarFaces pages reach {MAX_OFFSET} faces deep at most")
    index.catch_up()
    rows = None
    if filters.persona_id:
        labelled = store.labels_of_persona(filters.persona_id, pb.VERDICT_BELONGS)
        rows = index.rows_of(label.face_id for label in labelled)
    hidden = store.hidden_ids("face") if filters.exclude_hidden else set()
    wanted = offset + size + 1  # one more: is there a next page?
    scan = max(wanted * 2, 64)
    while True:
        nearest = index.nearest(query, scan, rows, exclude)
        passed = _passing(store, nearest, filters, hidden, wanted)
        exhausted = len(nearest) < scan
        if len(passed) >= wanted or exhausted or scan >= MAX_OFFSET * 4:
            break
        scan *= 4
    page = passed[offset:offset + size]
    more = len(passed) > offset + size
    return page, encode_token(scope, [offset + size]) if more else ""


def _passing(store: Store, nearest: list[tuple[str, float]], filters: Filters, hidden: set[str],
             wanted: int) -> list[Neighbour]:
    """The first `wanted` neighbours that still exist (read back from the store, a chunk at a
    time) and pass the filters."""
    passed: list[Neighbour] = []
    nearest = [(face_id, distance) for face_id, distance in nearest if face_id not in hidden]
    chunk = max(wanted, 16)
    for start in range(0, len(nearest), chunk):
        part = nearest[start:start + chunk]
        faces = {face.face_id: face for face in store.get_faces([face_id for face_id, _ in part])}  # erased: absent
        labels = store.labels_of_faces(list(faces)) if faces else {}
        for face_id, distance in part:
            face = faces.get(face_id)
            if face is None:
                continue
            belongs = [label.persona_id for label in labels.get(face_id, []) if label.verdict == pb.VERDICT_BELONGS]
            if filters.unlabelled_only and belongs:
                continue
            if filters.persona_id and filters.persona_id not in belongs:
                continue
            passed.append(Neighbour(face, distance, belongs[0] if belongs else ""))
            if len(passed) >= wanted:
                return passed
        chunk *= 2
    return passed
