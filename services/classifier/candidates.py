"""Candidate personas per face, and a face's verdict against one persona, computed from the
active version's own numbers (visage.model.ModelParameters: the centres, their thresholds
and the "does not belong" vetoes the ONNX graph is built from), with the graph's rule:

- a persona's distance to a face is the distance to its nearest centre (centroid or
  exemplar) that no veto removes (a face closer to a rejected face of the persona than to
  one of its centres cannot be named through that centre);
- the face is within the persona's threshold when that distance is at most that centre's
  threshold; the model names the face its nearest persona when within its threshold.

So the first candidate is the persona the model answers (when it names one), with the same
confidence (1 - distance / 1.2); Predictor.nearest (the graph) stays the one answer."""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import numpy as np

from visage.errors import InvalidArgument
from visage.model import ModelParameters, Predictor, distance_to_confidence
from visage.store.records import EMBEDDING_DIM

MAX_CANDIDATES = 10
ROWS_PER_BLOCK = 256  # faces per block: [rows, centres] distances stay small at 10k personas


def max_candidates(requested: int) -> int:
    """0 means 1; above MAX_CANDIDATES (or negative) is the caller's mistake."""
    if requested < 0 or requested > MAX_CANDIDATES:
        raise InvalidArgument(f"max_candidates must be between 0 and {MAX_CANDIDATES}, got {requested}")
    return requested or 1


@dataclass(frozen=True)
class Found:
    """One candidate of one face: persona index, its distance and the threshold at it."""
    persona: int
    distance: float
    limit: float

    @property
    def confidence(self) -> float:
        return float(distance_to_confidence(self.distance))

    @property
    def within(self) -> bool:
        return self.distance <= self.limit


class CandidateModel:
    """A version's parameters arranged for per-persona distances (built once per version)."""

    def __init__(self, parameters: ModelParameters):
        self.persona_ids = parameters.persona_ids
        personas = len(self.persona_ids)
        owner = np.asarray(parameters.centre_owner, np.int64)
        keep = owner < personas if personas else np.zeros(len(owner), bool)  # no sentinel centre
        order = np.argsort(owner[keep], kind="stable")
        self.centres = np.ascontiguousarray(np.asarray(parameters.centres, np.float32)[keep][order])
        self.owner = owner[keep][order]
        self.limit = np.asarray(parameters.centre_limit, np.float32)[keep][order]
        self.starts = np.searchsorted(self.owner, np.arange(personas))
        self.centre_norms = np.einsum("ij,ij->i", self.centres, self.centres)
        rejected = np.asarray(parameters.rejected, np.float32).reshape(-1, EMBEDDING_DIM)
        rejected_owner = np.asarray(parameters.rejected_owner, np.int64)
        # (rejected face j, centre r) for every centre r of the persona face j was rejected for.
        pairs = [(j, r) for j, who in enumerate(rejected_owner) for r in np.flatnonzero(self.owner == who)]
        pairs_array = np.array(pairs, np.int64).reshape(-1, 2)
        self.veto_rejected, self.veto_centre = pairs_array[:, 0], pairs_array[:, 1]
        self.rejected = rejected[np.unique(self.veto_rejected)] if len(pairs) else rejected[:0]
        remap = {j: k for k, j in enumerate(np.unique(self.veto_rejected))}
        self.veto_rejected = np.array([remap[j] for j in self.veto_rejected], np.int64)
        self.index = {persona_id: k for k, persona_id in enumerate(self.persona_ids)}

    def _squared(self, x: np.ndarray) -> np.ndarray:
        """[rows, centres] squared distances, vetoed centres at +inf."""
        d2 = np.maximum(np.einsum("ij,ij->i", x, x)[:, None] - 2.0 * (x @ self.centres.T) + self.centre_norms, 0.0)
        if len(self.veto_centre):
            r2 = np.maximum(np.einsum("ij,ij->i", x, x)[:, None] - 2.0 * (x @ self.rejected.T)
                            + np.einsum("ij,ij->i", self.rejected, self.rejected), 0.0)
            vetoed = r2[:, self.veto_rejected] < d2[:, self.veto_centre]
            rows, pair = np.nonzero(vetoed)
            d2[rows, self.veto_centre[pair]] = np.inf
        return d2

    def candidates(self, embeddings: np.ndarray, k: int) -> list[list[Found]]:
        """Per row, up to k personas by distance (nearest first); vetoed personas are left out."""
        x = np.ascontiguousarray(embeddings, np.float32).reshape(-1, EMBEDDING_DIM)
        if not len(self.persona_ids) or not len(x):
            return [[] for _ in range(len(x))]
        answers = []
        for start in range(0, len(x), ROWS_PER_BLOCK):
            d2 = self._squared(x[start:start + ROWS_PER_BLOCK])
            per_persona = np.minimum.reduceat(d2, self.starts, axis=1)  # every persona has a centroid
            nearest_centre = self._argmin_per_persona(d2, per_persona)
            top = min(k, per_persona.shape[1])
            picked = np.argpartition(per_persona, top - 1, axis=1)[:, :top]
            for row in range(len(d2)):
                chosen = sorted(picked[row], key=lambda p: (per_persona[row, p], p))
                answers.append([Found(int(p), float(np.sqrt(per_persona[row, p])),
                                      float(self.limit[nearest_centre[row, p]]))
                                for p in chosen if np.isfinite(per_persona[row, p])])
        return answers

    def _argmin_per_persona(self, d2: np.ndarray, per_persona: np.ndarray) -> np.ndarray:
        """[rows, personas]: the centre giving each persona's distance."""
        if len(self.centres) == len(self.persona_ids):  # no exemplars: one centre per persona
            return np.broadcast_to(np.arange(len(self.persona_ids)), per_persona.shape)
        hits = d2 == per_persona[:, self.owner]
        # The first centre of each persona equal to its minimum.
        first = np.where(hits, np.arange(len(self.owner))[None, :], len(self.owner))
        return np.minimum.reduceat(first, self.starts, axis=1).clip(max=len(self.owner) - 1)

    def against(self, embedding: np.ndarray, persona_id: str) -> Found | None:
        """The face against one persona (None: the version does not know it, or every one
        of its centres is vetoed for this face)."""
        k = self.index.get(persona_id)
        if k is None:
            return None
        stop = self.starts[k + 1] if k + 1 < len(self.starts) else len(self.owner)
        d2 = self._squared(np.asarray(embedding, np.float32).reshape(1, EMBEDDING_DIM))[0, self.starts[k]:stop]
        best = int(np.argmin(d2))
        if not np.isfinite(d2[best]):
            return None
        return Found(k, float(np.sqrt(d2[best])), float(self.limit[self.starts[k] + best]))


_BUILT: "weakref.WeakKeyDictionary[Predictor, CandidateModel | None]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def candidate_model(predictor: Predictor | None) -> CandidateModel | None:
    """The predictor's CandidateModel (None: no model, or an artifact exported before
    parameters were kept in it: such a version answers its one persona only)."""
    if predictor is None or predictor.parameters is None:
        return None
    with _LOCK:
        if predictor not in _BUILT:
            _BUILT[predictor] = CandidateModel(predictor.parameters)
        return _BUILT[predictor]
