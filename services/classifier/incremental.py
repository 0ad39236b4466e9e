"""Incremental re-classification: what a replica remembers of the shards it re-classified,
so that after a change of a few personas it predicts again only the faces whose answer
can change, instead of every face.

A model's answer for a face is its nearest persona (the nearest centre no veto removes),
that distance, and whether the distance is within that centre's threshold (known) or not.
A persona's distance to a face depends on that persona's centres and vetoes alone
(ModelParameters), so when a new version differs from the one a face was last answered by
only in some personas' centres or vetoes ("changed") and some thresholds, the face's
answer can change only if
- its old nearest persona changed (or was deleted), or
- a changed persona's centres come at least as close as its old nearest distance (a
  veto only removes centres: the raw nearest centre bounds the persona's distance), or
- its distance lies between an old and a new threshold of its nearest persona.
Every other face keeps its persona, distance and side of the threshold, hence its stored
verdict: it is neither predicted nor written. Faces never answered (new, or unlabelled since) are
predicted too.

What is remembered per shard: each face's embedding, nearest persona and distance, and
whether it was labelled (labelled faces get no verdict written, so unlabelling one makes
it due). It is valid only while nobody else wrote the shard's verdicts: every pass over a
shard swaps the shard's mark in the store (SHARD_MARK_KEY) to "<owner> <job> writing" when
it claims it and to "<owner> <job>" when it is done; a replica uses its memory of a shard
only when the mark is still the one it left. Faces ingested since (IMAGE_INGESTED events)
are added as due; an erasure (ERASED) forgets everything.

The memory is bounded (VISAGE_RECLASSIFY_CACHE_FACES faces, least recently used shards
go first; 0 turns it off): 128 floats, the id and a few numbers per face, ~0.7 GB per million.
"""
from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from visage.config import ClassifierSettings, env_name
from visage.model import ModelParameters, changed_personas, threshold_bands
from visage.store.base import Store
from visage.v1 import resources_pb2 as pb

log = logging.getLogger(__name__)

CACHE_FACES_ENV = env_name(ClassifierSettings, "cache_faces")  # VISAGE_RECLASSIFY_CACHE_FACES
DEFAULT_CACHE_FACES = ClassifierSettings.cache_faces  # 1_000_000
SHARD_MARK_KEY = "reclassify.shard-mark.{shards}.{shard}"
# Distances are computed here in numpy and in the graph by ONNX Runtime: a centre this much
# farther than the old nearest one could still win by rounding, so it makes the face due.
DISTANCE_MARGIN = 1e-3
EVENT_PAGE = 1000


@dataclass(frozen=True)
class ShardMemory:
    """A shard's faces as its last pass on this replica left them."""
    face_ids: list[str]
    embeddings: np.ndarray   # [n, 128] float32
    nearest: np.ndarray      # [n] persona index in parameters.persona_ids; -1: due (never answered)
    distance: np.ndarray     # [n] float32
    labelled: np.ndarray     # [n] bool: labelled as someone then (no verdict written)
    parameters: ModelParameters
    mark: str

    def __len__(self) -> int:
        return len(self.face_ids)

    def with_faces(self, face_ids: list[str], embeddings: np.ndarray) -> "ShardMemory":
        """Plus faces it does not hold yet, due."""
        known = set(self.face_ids)
        fresh = [i for i, face_id in enumerate(face_ids) if face_id not in known]
        if not fresh:
            return self
        return ShardMemory(self.face_ids + [face_ids[i] for i in fresh],
                           np.concatenate([self.embeddings, embeddings[fresh]]),
                           np.concatenate([self.nearest, np.full(len(fresh), -1, np.int64)]),
                           np.concatenate([self.distance, np.zeros(len(fresh), np.float32)]),
                           np.concatenate([self.labelled, np.zeros(len(fresh), bool)]), self.parameters, self.mark)


def labelled_flags(face_ids: list[str], labelled: set[str]) -> np.ndarray:
    if not labelled or labelled.isdisjoint(face_ids):
        return np.zeros(len(face_ids), bool)
    return np.fromiter((face_id in labelled for face_id in face_ids), bool, count=len(face_ids))


@dataclass(frozen=True, eq=False)
class VersionChange:
    """From the version a memory was answered by (`old`) to the one running (`new`): an old ->
    new persona index map (-1: the persona's centres or vetoes changed, or it is gone), the new
    centres of changed personas, and per old persona the distances at which its faces may turn
    known or unknown (an empty band: low > high). Computed once per run and old version."""
    old: ModelParameters
    new: ModelParameters
    known_personas: set[str]
    remap: np.ndarray          # [len(old.persona_ids) + 1]: the last entry maps "no answer" (-1)
    changed_centres: np.ndarray
    band_low: np.ndarray       # [len(old.persona_ids) + 1]
    band_high: np.ndarray

    @classmethod
    def between(cls, old: ModelParameters, new: ModelParameters, known_personas: set[str]) -> "VersionChange":
        # A persona deleted since is answered as unknown now: its faces' verdicts change too.
        changed = changed_personas(old, new) | (set(old.persona_ids) - known_personas)
        new_index = {persona_id: k for k, persona_id in enumerate(new.persona_ids)}
        remap = np.array([-1 if p in changed else new_index.get(p, -1) for p in old.persona_ids] + [-1], np.int64)
        bands = threshold_bands(old, new, [p for p in old.persona_ids if p not in changed and p in new_index])
        low = np.array([bands.get(p, (np.inf, 0.0))[0] for p in old.persona_ids] + [np.inf], np.float32)
        high = np.array([bands.get(p, (0.0, -np.inf))[1] for p in old.persona_ids] + [-np.inf], np.float32)
        return cls(old, new, known_personas, remap, new.centres_of(changed), low, high)


def due_faces(memory: ShardMemory, change: VersionChange, labelled_now: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(due, carried): which faces the new version must answer again, and for the others
    their nearest persona as an index into the new version's persona_ids."""
    carried = change.remap[memory.nearest]  # nearest -1 reads the "no answer" entry at the end
    distance = memory.distance
    due = ((carried < 0) | (memory.labelled & ~labelled_now) | ~np.isfinite(distance)
           | ((change.band_low[memory.nearest] - DISTANCE_MARGIN <= distance)
              & (distance <= change.band_high[memory.nearest] + DISTANCE_MARGIN)))
    centres = change.changed_centres
    if len(centres) and not due.all():
        open_ = np.flatnonzero(~due)
        due[open_] = _nearest_squared(memory.embeddings[open_], centres) <= (distance[open_] + DISTANCE_MARGIN) ** 2
    return due, np.where(due, -1, carried)


def _nearest_squared(rows: np.ndarray, centres: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Per row, the squared distance to its nearest centre."""
    centre_norms = np.einsum("ij,ij->i", centres, centres)
    out = np.empty(len(rows), np.float32)
    for start in range(0, len(rows), chunk):
        block = rows[start:start + chunk]
        squared = np.einsum("ij,ij->i", block, block)[:, None] - 2 * block @ centres.T + centre_norms[None, :]
        out[start:start + chunk] = squared.min(axis=1)
    return out


@dataclass(frozen=True)
class PassTicket:
    """What a remembering pass needs to be remembered: the shard marks it swaps."""
    epoch: int  # erasures seen when it began: one since means its memory is not kept
    shards: int
    writing: str
    done: str


class ShardPass:
    """One pass of a run over a claimed shard: the faces it predicts (every face of the shard
    read from the store, or a remembered shard's due faces) and what it leaves to remember."""

    def __init__(self, shard: int, base: ShardMemory | None = None, due: np.ndarray | None = None,
                 carried: np.ndarray | None = None, labelled_now: np.ndarray | None = None,
                 ticket: PassTicket | None = None, remember: bool = True):
        self.shard, self.ticket = shard, ticket
        self._base, self._rows, self._carried = base, (np.flatnonzero(due) if due is not None else None), carried
        self._labelled_now = labelled_now  # of the base's faces, by the run's labels
        self._remember = remember and ticket is not None
        self.arrived: list[tuple[list[str], np.ndarray]] = []  # faces ingested into the shard meanwhile
        self._face_ids: list[str] = []
        self._embeddings: list[np.ndarray] = []
        self._nearest: list[np.ndarray] = []
        self._distance: list[np.ndarray] = []

    @property
    def incremental(self) -> bool:
        return self._base is not None

    def batches(self, store: Store, shards: int, batch_rows: int) -> Iterator[tuple[list[str], np.ndarray]]:
        if self._base is None:
            for face_ids, matrix in store.iter_shard_embeddings(self.shard, shards, batch_rows):
                if self._remember:
                    self._face_ids += face_ids
                    self._embeddings.append(matrix)
                yield face_ids, matrix
            return
        for start in range(0, len(self._rows), batch_rows):
            rows = self._rows[start:start + batch_rows]
            yield [self._base.face_ids[i] for i in rows], self._base.embeddings[rows]

    def answered(self, nearest: np.ndarray, distance: np.ndarray, personas: int) -> None:
        """The model's nearest outputs for the last batch (a persona-less model's index
        `personas` means no answer: due next time)."""
        if self._remember:
            self._nearest.append(np.where(nearest < personas, nearest, -1))
            self._distance.append(distance)

    def carried_faces(self) -> int:
        """Unlabelled faces whose verdict stands without being predicted (progress counts them)."""
        if self._base is None:
            return 0
        skipped = np.ones(len(self._base), bool)
        skipped[self._rows] = False
        return int((skipped & ~self._labelled_now).sum())

    def memory(self, parameters: ModelParameters, labelled: set[str], mark: str) -> ShardMemory | None:
        if not self._remember:
            return None
        nearest = _joined(self._nearest, np.zeros(0, np.int64))
        distance = _joined(self._distance, np.zeros(0, np.float32))
        if self._base is None:
            face_ids = self._face_ids
            embeddings = _joined(self._embeddings, np.zeros((0, 128), np.float32))
            return ShardMemory(face_ids, embeddings, nearest.astype(np.int64, copy=False),
                               distance.astype(np.float32, copy=False), labelled_flags(face_ids, labelled), parameters,
                               mark)
        base = self._base
        all_nearest, all_distance = self._carried.copy(), base.distance.copy()
        all_nearest[self._rows], all_distance[self._rows] = nearest, distance
        return ShardMemory(base.face_ids, base.embeddings, all_nearest, all_distance, self._labelled_now,
                           parameters, mark)


def _joined(parts: list[np.ndarray], empty: np.ndarray) -> np.ndarray:
    """The parts as one array; a shard read in one batch (most, at 8192 rows a batch) is not
    copied (this runs on the run's writer thread, its bottleneck)."""
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else empty


class ReclassifyMemory:
    """The shards this replica remembers (least recently used first), kept up to date with
    the event log, which it reads itself at each claim (IMAGE_INGESTED, ERASED)."""

    def __init__(self, capacity_faces: int = DEFAULT_CACHE_FACES):
        self.capacity_faces = capacity_faces
        self._shards: OrderedDict[tuple[int, int], ShardMemory] = OrderedDict()  # (shards, shard) ->
        self._lock = threading.Lock()
        self._cursor: str | None = None
        self._epoch = 0  # erasures seen: a pass that began before one is not remembered
        # Remembering passes in flight (a pass dropped unclosed, its run stopped, just goes).
        self._passes: weakref.WeakSet[ShardPass] = weakref.WeakSet()
        self._last_change: VersionChange | None = None  # shards of one run share it

    @classmethod
    def from_env(cls) -> "ReclassifyMemory":
        capacity = ClassifierSettings.read("cache_faces")
        if capacity < 0:
            raise ValueError(f"{CACHE_FACES_ENV} ({capacity}) must be 0 (off) or more")
        return cls(capacity)

    @property
    def enabled(self) -> bool:
        return self.capacity_faces > 0

    def remembered(self, shards: int) -> list[int]:
        """Shards this replica remembers, most recently used first (claimed first: a pass over
        one of them reads no embeddings back)."""
        with self._lock:
            return [shard for (count, shard) in reversed(self._shards) if count == shards]

    def open_pass(self, store: Store, writer: str, shards: int, shard: int, parameters: ModelParameters | None,
                  labelled: set[str], known_personas: set[str], incremental: bool) -> ShardPass:
        """At a claim: marks the shard as being written by `writer` ("<owner> <job>"; every
        writer does, remembering or not) and plans the pass: over the remembered faces that are
        due when the memory is still valid and `incremental`, else over the whole shard."""
        writing = f"{writer} writing"
        previous = store.swap_meta(shard_mark_key(shards, shard), lambda _current: writing)
        if not self.enabled:
            return ShardPass(shard, remember=False)
        self.catch_up(store, shards)
        with self._lock:
            memory = self._shards.pop((shards, shard), None)
            ticket = PassTicket(self._epoch, shards, writing, writer)
        if memory is not None and memory.mark == previous and incremental and parameters is not None:
            change = self._change(memory.parameters, parameters, known_personas)
            labelled_now = labelled_flags(memory.face_ids, labelled)
            due, carried = due_faces(memory, change, labelled_now)
            shard_pass = ShardPass(shard, memory, due, carried, labelled_now, ticket=ticket)
        else:
            shard_pass = ShardPass(shard, ticket=ticket, remember=parameters is not None)
        with self._lock:
            self._passes.add(shard_pass)
        return shard_pass

    def _change(self, old: ModelParameters, new: ModelParameters, known_personas: set[str]) -> VersionChange:
        last = self._last_change  # the same objects: the same run and old version
        if last is None or not (last.old is old and last.new is new and last.known_personas is known_personas):
            last = self._last_change = VersionChange.between(old, new, known_personas)
        return last

    def close_pass(self, store: Store, shard_pass: ShardPass, finished: bool, parameters: ModelParameters | None,
                   labelled: set[str]) -> None:
        """The pass is over (`finished`: its shard is done, every write landed): marks the shard
        as this pass left it and remembers it, unless somebody else wrote it meanwhile."""
        ticket = shard_pass.ticket
        if ticket is None:
            return
        memory = None
        if finished and parameters is not None:
            key = shard_mark_key(ticket.shards, shard_pass.shard)
            replaced = store.swap_meta(key, lambda current: ticket.done if current == ticket.writing else current)
            if replaced == ticket.writing:
                memory = shard_pass.memory(parameters, labelled, ticket.done)
        self._end(shard_pass, memory)

    def _end(self, shard_pass: ShardPass, memory: ShardMemory | None) -> None:
        ticket = shard_pass.ticket
        with self._lock:
            self._passes.discard(shard_pass)
            if memory is None or ticket.epoch != self._epoch or len(memory) > self.capacity_faces:
                return
            for face_ids, embeddings in shard_pass.arrived:
                memory = memory.with_faces(face_ids, embeddings)
            self._shards[(ticket.shards, shard_pass.shard)] = memory
            while sum(len(m) for m in self._shards.values()) > self.capacity_faces:
                self._shards.popitem(last=False)

    def catch_up(self, store: Store, shards: int) -> None:
        """Applies the events appended since the last catch-up."""
        with self._lock:
            if self._cursor is None:  # first use: nothing remembered yet, everything before is moot
                self._cursor = store.latest_cursor()
                return
            cursor = self._cursor
        ingested: list[str] = []
        erased = False
        while events := store.read_events(cursor, EVENT_PAGE):
            cursor = events[-1].cursor
            ingested += [e.subject for e in events if e.type == pb.EVENT_TYPE_IMAGE_INGESTED]
            ingested += [e.attributes.get("image_id", "") for e in events if e.type == pb.EVENT_TYPE_FACE_ADDED]
            erased |= any(e.type == pb.EVENT_TYPE_ERASED for e in events)
        faces = [face for image_faces in store.faces_of_images(dict.fromkeys(ingested)).values()
                 for face in image_faces] if ingested else []
        by_shard: dict[int, list] = {}
        for face in faces:
            by_shard.setdefault(store.shard_of(face.face_id, shards), []).append(face)
        with self._lock:
            self._cursor = cursor
            if erased:  # which faces went is not worth finding out: erasures are rare
                self._shards.clear()
                self._epoch += 1
                return
            for shard, shard_faces in by_shard.items():
                face_ids = [face.face_id for face in shard_faces]
                embeddings = np.stack([np.asarray(face.embedding, np.float32) for face in shard_faces])
                if (shards, shard) in self._shards:
                    self._shards[(shards, shard)] = self._shards[(shards, shard)].with_faces(face_ids, embeddings)
                for shard_pass in self._passes:
                    if (shard_pass.ticket.shards, shard_pass.shard) == (shards, shard):
                        shard_pass.arrived.append((face_ids, embeddings))

    def estimated_faces(self, shards: int) -> int | None:
        """The faces of all `shards` shards, extrapolated from those remembered (None: none is)."""
        with self._lock:
            sizes = [len(m) for (count, _shard), m in self._shards.items() if count == shards]
        return round(sum(sizes) * shards / len(sizes)) if sizes else None


def shard_mark_key(shards: int, shard: int) -> str:
    return SHARD_MARK_KEY.format(shards=shards, shard=shard)
