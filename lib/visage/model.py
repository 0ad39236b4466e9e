"""The classifier model: how labels become a model, how it is evaluated and
exported to ONNX, and the `Predictor` that runs it (onnxruntime).

Model: an open-set nearest-centroid classifier over the 128-d dlib embeddings.
- One centroid per persona, the mean of the faces labelled as belonging to it.
  dlib embeddings are trained for euclidean distance (same person < ~0.6), so
  the nearest centroid is a strong classifier; it needs no second class (one
  persona works), a single face is a valid centroid, and fitting is a streaming
  sum (1M faces / 10k personas fit in seconds, in bounded memory).
- Open set, per persona: a face farther from its nearest persona than that
  persona's distance threshold is "unknown". A shared threshold comes from
  the data (the middle of the gap between the 90th percentile of genuine and
  the 10th percentile of impostor leave-one-out distances on the calibration
  part of the labels, clamped to [THRESHOLD_FLOOR, THRESHOLD_CEILING]); it is
  the floor of every persona's threshold, which rises just enough to cover
  that persona's own labelled faces, by at most PERSONA_STRETCH (0.05) and
  never beyond the ceiling; a labelled face farther out becomes an exemplar. One unusual face thus
  moves only its own persona's threshold, never every other's, and a "not P"
  label moves no threshold at all (it vetoes instead, below). The shared
  threshold is stored with the version in confidence units.
- Confidence = 1 - distance / DISTANCE_SCALE: 1 at the persona's centroid,
  0.5 at distance 0.6 (dlib's "same person" limit), 0 at 1.2. A named face
  shows this similarity to its persona; an unknown face shows 1 - the
  similarity to its nearest persona (e.g. "unknown 78%": the nearest persona
  is at similarity 22%).
- Labels are facts: a face labelled as belonging to P that the centroid rule
  would not name P becomes an exemplar of P (an extra centre owned by P,
  accepting faces within the shared threshold), so every such label is
  honoured by construction; the trainer asserts it on the exported graph.
- "Does not belong" labels: each rejected face vetoes its persona for every
  query that is closer to the rejected face than to that persona's centroid
  (the rejected face itself and its near duplicates); the next-nearest
  persona may then answer, or "unknown".

The estimator is a scikit-learn estimator (`OpenSetCentroidClassifier`); it is
exported through skl2onnx with a registered converter, and `Predictor` runs
the ONNX graph. Tests check that ONNX and the estimator agree.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import io
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort
from sklearn.base import BaseEstimator

from visage.store.records import EMBEDDING_DIM, ModelVersionRecord

ALGORITHM = "sklearn-open-set-nearest-centroid+onnx"
DISTANCE_SCALE = 1.2  # distance at which confidence reaches 0 (twice dlib's 0.6)
DEFAULT_DISTANCE_THRESHOLD = 0.5  # used when the labels say nothing about it
THRESHOLD_GRID = np.round(np.arange(0.35, 0.6001, 0.005), 3)  # dlib: same person is usually < 0.6
THRESHOLD_FLOOR, THRESHOLD_CEILING = 0.4, 0.6  # the shared threshold stays within dlib's same-person range
COVER_MARGIN = 0.01  # a persona's threshold sits this far beyond its farthest labelled face
PERSONA_STRETCH = 0.05  # how far beyond the shared threshold a persona's own faces may move its threshold
OUTPUT_THRESHOLD = "persona_threshold"
ONNX_OPSET = 17
INPUT_NAME = "embeddings"
OUTPUT_INDEX, OUTPUT_DISTANCE = "persona_index", "distance"
VETO_PENALTY = np.float32(1e6)  # added to a vetoed persona's squared distance
SENTINEL_COORDINATE = 1e3  # a centroid no embedding comes near (model with no persona)
CELLS_PER_CHUNK = 1 << 24  # rows x (centroids + rejections) per onnxruntime call: bounds memory


def distance_to_confidence(distance: np.ndarray | float) -> np.ndarray:
    return np.clip(1.0 - np.asarray(distance, dtype=np.float32) / DISTANCE_SCALE, 0.0, 1.0)


def confidence_to_distance(confidence: float) -> float:
    return float((1.0 - confidence) * DISTANCE_SCALE)


def _squared_distances(x: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Same formula as the ONNX graph: |x|^2 - 2 x.c + |c|^2 (float32)."""
    xx = np.einsum("ij,ij->i", x, x)[:, None]
    cc = np.einsum("ij,ij->i", centres, centres)[None, :]
    return xx - 2.0 * (x @ centres.T) + cc


# ---------------------------------------------------------------------------
# The scikit-learn estimator
# ---------------------------------------------------------------------------
class OpenSetCentroidClassifier(BaseEstimator):
    """Nearest persona centre with rejection vetoes and per-persona distance thresholds.

    classes_: persona ids (model output order); centroids_: [K, 128];
    exemplars_: [e, 128] labelled faces kept as extra centres of
    classes_[exemplar_owner_[j]]; persona_thresholds_: [K] distances;
    rejected_: [m, 128] embeddings labelled "does not belong" to
    classes_[rejected_owner_[j]]."""

    def __init__(self, distance_threshold: float = DEFAULT_DISTANCE_THRESHOLD):
        self.distance_threshold = distance_threshold

    def fit(self, X, y, rejected_X=None, rejected_y=None) -> "OpenSetCentroidClassifier":
        """In-memory fit (tests, baseline); the trainer streams with `from_sums`."""
        # Group means by hand: sklearn's NearestCentroid refuses a single class,
        # and one persona is a normal start. Tests check both agree otherwise.
        classes, inverse = np.unique(np.asarray(y), return_inverse=True)
        sums = np.zeros((len(classes), EMBEDDING_DIM))
        np.add.at(sums, inverse, np.asarray(X, dtype=np.float64))
        counts = np.bincount(inverse, minlength=len(classes)).astype(np.float64)
        self._set([str(c) for c in classes], sums / counts[:, None], rejected_X, rejected_y)
        return self

    @classmethod
    def from_sums(cls, classes: list[str], sums: np.ndarray, counts: np.ndarray,
                  rejected_X=None, rejected_y=None,
                  distance_threshold: float = DEFAULT_DISTANCE_THRESHOLD) -> "OpenSetCentroidClassifier":
        model = cls(distance_threshold)
        model._set(list(classes), sums / np.maximum(counts, 1)[:, None], rejected_X, rejected_y)
        return model

    def _set(self, classes, centroids, rejected_X, rejected_y) -> None:
        self.classes_ = list(classes)
        self.centroids_ = np.asarray(centroids, dtype=np.float32).reshape(-1, EMBEDDING_DIM)
        self.persona_thresholds_ = None  # None: every persona uses distance_threshold
        self.exemplars_ = np.zeros((0, EMBEDDING_DIM), np.float32)
        self.exemplar_owner_ = np.zeros(0, dtype=np.int64)
        index = {persona: i for i, persona in enumerate(self.classes_)}
        keep = [i for i, p in enumerate(rejected_y if rejected_y is not None else []) if p in index]
        # Only rejections of modelled personas can veto anything.
        rejected = np.asarray(rejected_X if keep else np.zeros((0, EMBEDDING_DIM)), dtype=np.float32)
        self.rejected_ = rejected.reshape(-1, EMBEDDING_DIM)[keep] if keep else np.zeros((0, EMBEDDING_DIM), np.float32)
        self.rejected_owner_ = np.array([index[rejected_y[i]] for i in keep], dtype=np.int64)

    def thresholds(self) -> np.ndarray:
        """Each persona's distance threshold."""
        if self.persona_thresholds_ is None:
            return np.full(len(self.classes_), self.distance_threshold, dtype=np.float32)
        return np.asarray(self.persona_thresholds_, dtype=np.float32)

    def add_exemplars(self, X: np.ndarray, owner: np.ndarray) -> None:
        self.exemplars_ = np.concatenate([self.exemplars_, np.asarray(X, np.float32).reshape(-1, EMBEDDING_DIM)])
        self.exemplar_owner_ = np.concatenate([self.exemplar_owner_, np.asarray(owner, np.int64)])

    def veto_pairs(self, owner_of_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rejected face j, centre r) for every centre r of the persona face j
        was rejected for: a face closer to rejected face j than to centre r
        cannot be named through r. Per centre (not per persona), so a face
        labelled "belongs" (an exemplar, distance 0) is never vetoed by a
        nearby "not" label, while the "not" face and its near duplicates
        (closer to it than to any of the persona's centres) always are."""
        if not len(self.rejected_):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        pairs = [(j, r) for j, owner in enumerate(self.rejected_owner_) for r in np.flatnonzero(owner_of_row == owner)]
        pairs_array = np.array(pairs, dtype=np.int64).reshape(-1, 2)
        return pairs_array[:, 0], pairs_array[:, 1]

    # -- the graph's centres: a sentinel keeps a persona-less model valid ----
    def graph_centroids(self) -> np.ndarray:
        if len(self.centroids_):
            return self.centroids_
        return np.full((1, EMBEDDING_DIM), SENTINEL_COORDINATE, dtype=np.float32)

    def graph_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(centres, persona index of each centre, distance threshold of each
        centre): centroids first, then exemplars (which accept within the
        shared threshold)."""
        centroids = self.graph_centroids()
        owner = np.arange(len(centroids), dtype=np.int64)
        limits = self.thresholds() if len(self.classes_) else np.zeros(1, np.float32)
        return (np.concatenate([centroids, self.exemplars_]).astype(np.float32),
                np.concatenate([owner, self.exemplar_owner_]),
                np.concatenate([limits, np.full(len(self.exemplars_), self.distance_threshold, np.float32)]
                               ).astype(np.float32))

    def nearest(self, X: np.ndarray, skip_rejections: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(persona index of the nearest non-vetoed centre, its distance, its
        distance threshold) per row; the reference computation the ONNX graph mirrors."""
        X = np.asarray(X, dtype=np.float32).reshape(-1, EMBEDDING_DIM)
        centres, owner_of_row, limit_of_row = self.graph_rows()
        d2 = _squared_distances(X, centres)
        pair_rejection, pair_row = self.veto_pairs(owner_of_row)
        if len(pair_rejection):
            if skip_rejections is not None:
                kept = ~np.asarray(skip_rejections)[pair_rejection]
                pair_rejection, pair_row = pair_rejection[kept], pair_row[kept]
            d2r = _squared_distances(X, self.rejected_)
            closer = (d2r[:, pair_rejection] < d2[:, pair_row]).astype(np.float32)
            d2 = d2 + (closer @ _one_hot(pair_row, len(centres))) * VETO_PENALTY
        row = d2.argmin(axis=1)
        distance = np.sqrt(np.maximum(d2[np.arange(len(X)), row], 0.0))
        return owner_of_row[row].astype(np.int64), distance, limit_of_row[row]

    def predict(self, X) -> np.ndarray:
        """Persona id per row, "" for unknown (in chunks: bounded memory at 10k personas)."""
        X = np.asarray(X, dtype=np.float32).reshape(-1, EMBEDDING_DIM)
        labels = np.array(self.classes_ + [""], dtype=object)
        rows = max(1, CELLS_PER_CHUNK // 4 // max(len(self.centroids_) + len(self.exemplars_) + len(self.rejected_), 1))
        answers = []
        for start in range(0, len(X), rows):
            index, distance, limit = self.nearest(X[start:start + rows])
            known = (distance <= limit) & (index < len(self.classes_))
            answers.append(labels[np.where(known, index, len(self.classes_))])
        return np.concatenate(answers) if answers else labels[:0]


def _one_hot(index: np.ndarray, width: int) -> np.ndarray:
    matrix = np.zeros((len(index), width), dtype=np.float32)
    matrix[np.arange(len(index)), index] = 1.0
    return matrix


# ---------------------------------------------------------------------------
# ONNX export (skl2onnx converter for the estimator)
# ---------------------------------------------------------------------------
def _register_converter() -> None:
    from skl2onnx import get_model_alias, update_registered_converter
    from skl2onnx.algebra.onnx_ops import (
        OnnxAdd, OnnxArgMin, OnnxCast, OnnxGather, OnnxLess, OnnxMatMul, OnnxMax, OnnxMul, OnnxReduceMin,
        OnnxReduceSumSquare, OnnxSqrt, OnnxSub,
    )
    from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
    from onnx import TensorProto

    def parser(scope, model, inputs, custom_parsers=None):
        operator = scope.declare_local_operator(get_model_alias(type(model)), model)
        operator.inputs = inputs
        operator.outputs.append(scope.declare_local_variable(OUTPUT_INDEX, Int64TensorType()))
        operator.outputs.append(scope.declare_local_variable(OUTPUT_DISTANCE, FloatTensorType()))
        operator.outputs.append(scope.declare_local_variable(OUTPUT_THRESHOLD, FloatTensorType()))
        return operator.outputs

    def shape_calculator(operator):
        rows = operator.inputs[0].get_first_dimension()
        operator.outputs[0].type = Int64TensorType([rows])
        operator.outputs[1].type = FloatTensorType([rows])
        operator.outputs[2].type = FloatTensorType([rows])

    def squared_distances(x, x_norms, centres, opv):
        cross = OnnxMatMul(x, centres.T.copy(), op_version=opv)
        centre_norms = np.einsum("ij,ij->i", centres, centres)[None, :].astype(np.float32)
        return OnnxAdd(OnnxSub(x_norms, OnnxMul(cross, np.array([2.0], np.float32), op_version=opv),
                               op_version=opv), centre_norms, op_version=opv)

    def converter(scope, operator, container):
        model: OpenSetCentroidClassifier = operator.raw_operator
        opv = container.target_opset
        x = operator.inputs[0]
        centres, owner_of_row, limit_of_row = model.graph_rows()
        x_norms = OnnxReduceSumSquare(x, axes=[1], keepdims=1, op_version=opv)
        d2 = squared_distances(x, x_norms, centres, opv)
        pair_rejection, pair_row = model.veto_pairs(owner_of_row)
        if len(pair_rejection):
            d2r = squared_distances(x, x_norms, model.rejected_, opv)
            closer = OnnxCast(OnnxLess(OnnxGather(d2r, pair_rejection, axis=1, op_version=opv),
                                       OnnxGather(d2, pair_row, axis=1, op_version=opv), op_version=opv),
                              to=TensorProto.FLOAT, op_version=opv)
            vetoes = OnnxMatMul(closer, _one_hot(pair_row, len(centres)), op_version=opv)
            d2 = OnnxAdd(d2, OnnxMul(vetoes, np.array([VETO_PENALTY], np.float32), op_version=opv),
                         op_version=opv)
        row = OnnxArgMin(d2, axis=1, keepdims=0, op_version=opv)
        index = OnnxGather(owner_of_row, row, axis=0, op_version=opv, output_names=operator.outputs[:1])
        limit = OnnxGather(limit_of_row, row, axis=0, op_version=opv, output_names=operator.outputs[2:])
        nearest = OnnxReduceMin(d2, axes=[1], keepdims=0, op_version=opv)
        distance = OnnxSqrt(OnnxMax(nearest, np.array([0.0], np.float32), op_version=opv),
                            op_version=opv, output_names=operator.outputs[1:2])
        index.add_to(scope, container)
        distance.add_to(scope, container)
        limit.add_to(scope, container)

    update_registered_converter(OpenSetCentroidClassifier, "VisageOpenSetCentroidClassifier",
                                shape_calculator, converter, parser=parser)


_CONVERTER_REGISTERED = False


def export_onnx(model: OpenSetCentroidClassifier) -> bytes:
    """Serialized ONNX graph: embeddings [n,128] float32 -> persona_index [n], distance [n]."""
    global _CONVERTER_REGISTERED
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    if not _CONVERTER_REGISTERED:
        _register_converter()
        _CONVERTER_REGISTERED = True
    onnx_model = convert_sklearn(model, initial_types=[(INPUT_NAME, FloatTensorType([None, EMBEDDING_DIM]))],
                                 target_opset=ONNX_OPSET, final_types=None)
    entry = onnx_model.metadata_props.add()
    entry.key, entry.value = PARAMETERS_KEY, ModelParameters.of(model).to_text()
    return onnx_model.SerializeToString()


# ---------------------------------------------------------------------------
# Parameters: what changed between two versions
# ---------------------------------------------------------------------------
PARAMETERS_KEY = "visage.parameters"  # ONNX metadata entry (graphs exported before it have none)


@dataclass(frozen=True, eq=False)  # compared by identity: one object per loaded version
class ModelParameters:
    """The numbers a version computes with, by persona: its centres (centroid and exemplars)
    with their distance thresholds, and its "does not belong" faces (the graph's constants,
    kept beside it in the artifact's metadata). A face's nearest persona and distance (the
    nearest centre no veto removes) depend on each persona's centres and vetoes alone, and the
    thresholds only decide known or unknown at that distance; so two versions can answer a
    face differently only through personas whose centres or vetoes differ
    (`changed_personas`), or at a distance between a persona's old and new threshold
    (`threshold_bands`)."""
    persona_ids: list[str]
    centres: np.ndarray         # [R, 128] float32
    centre_owner: np.ndarray    # [R] persona index (a persona-less model's sentinel centre: index 0)
    centre_limit: np.ndarray    # [R] distance threshold
    rejected: np.ndarray        # [m, 128] float32
    rejected_owner: np.ndarray  # [m] persona index

    @classmethod
    def of(cls, model: OpenSetCentroidClassifier) -> "ModelParameters":
        centres, owner, limit = model.graph_rows()
        return cls(list(model.classes_), centres, owner, limit, model.rejected_, model.rejected_owner_)

    def to_text(self) -> str:
        buffer = io.BytesIO()
        np.savez(buffer, persona_ids=np.array(self.persona_ids, dtype=str), centres=self.centres,
                 centre_owner=self.centre_owner, centre_limit=self.centre_limit, rejected=self.rejected,
                 rejected_owner=self.rejected_owner)
        return base64.b64encode(buffer.getvalue()).decode("ascii")

    @classmethod
    def from_text(cls, text: str) -> "ModelParameters":
        arrays = np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False)
        return cls([str(p) for p in arrays["persona_ids"]], arrays["centres"], arrays["centre_owner"],
                   arrays["centre_limit"], arrays["rejected"], arrays["rejected_owner"])

    @functools.cached_property
    def _centre_order(self) -> tuple[np.ndarray, np.ndarray]:
        """Centre rows grouped by persona (stable) and each persona's [start, end) in that order."""
        order = np.argsort(self.centre_owner, kind="stable")
        return order, np.searchsorted(self.centre_owner[order], np.arange(len(self.persona_ids) + 1))

    @functools.cached_property
    def answer_digests(self) -> dict[str, bytes]:
        """Persona id -> a digest of its centres and vetoes (once per object)."""
        order, bounds = self._centre_order
        centres = np.ascontiguousarray(self.centres[order])
        rejected = _rows_by_owner(self.rejected_owner, len(self.persona_ids), self.rejected)
        return {persona_id: hashlib.blake2b(centres[bounds[k]:bounds[k + 1]].tobytes() + b"|" + rejected[k],
                                            digest_size=16).digest()
                for k, persona_id in enumerate(self.persona_ids)}

    def limits_of(self, k: int) -> np.ndarray:
        """Persona k's centres' thresholds, in the order answer_digests reads its centres."""
        order, bounds = self._centre_order
        return self.centre_limit[order[bounds[k]:bounds[k + 1]]]

    def centres_of(self, persona_ids: set[str]) -> np.ndarray:
        """This version's centres owned by these personas."""
        owners = [k for k, persona_id in enumerate(self.persona_ids) if persona_id in persona_ids]
        return self.centres[np.isin(self.centre_owner, owners)] if self.persona_ids else self.centres[:0]


def _rows_by_owner(owner: np.ndarray, personas: int, rows: np.ndarray) -> list[bytes]:
    """Per persona index, the bytes of its rows (in row order)."""
    order = np.argsort(owner, kind="stable")
    packed = np.ascontiguousarray(np.asarray(rows, np.float32).reshape(len(owner), EMBEDDING_DIM)[order])
    bounds = np.searchsorted(owner[order], np.arange(personas + 1))
    return [packed[bounds[k]:bounds[k + 1]].tobytes() for k in range(personas)]


def changed_personas(old: ModelParameters, new: ModelParameters) -> set[str]:
    """Personas whose centres or vetoes differ between two versions (added and removed ones
    included): a face's nearest persona can change only through them."""
    before, after = old.answer_digests, new.answer_digests
    return {persona_id for persona_id in before.keys() | after.keys() if before.get(persona_id) != after.get(persona_id)}


def threshold_bands(old: ModelParameters, new: ModelParameters, unchanged: Iterable[str]
                    ) -> dict[str, tuple[float, float]]:
    """Of personas whose centres are unchanged, those whose thresholds moved: persona id ->
    (lowest, highest) of the moved thresholds, old and new. A face nearest such a persona is
    known by one version and unknown by the other only at a distance in that band."""
    old_index = {persona_id: k for k, persona_id in enumerate(old.persona_ids)}
    new_index = {persona_id: k for k, persona_id in enumerate(new.persona_ids)}
    bands = {}
    for persona_id in unchanged:
        before, after = old.limits_of(old_index[persona_id]), new.limits_of(new_index[persona_id])
        moved = before != after
        if moved.any():
            both = np.concatenate([before[moved], after[moved]])
            bands[persona_id] = (float(both.min()), float(both.max()))
    return bands


# ---------------------------------------------------------------------------
# Runtime
# ---------------------------------------------------------------------------
class Predictor:
    """Runs one stored model version with onnxruntime. Thread-safe (an
    InferenceSession may be run from several threads)."""

    def __init__(self, version: int, persona_ids: list[str], unknown_threshold: float,
                 session: ort.InferenceSession, width: int, parameters: ModelParameters | None = None):
        self.version = version
        self.persona_ids = list(persona_ids)
        self.unknown_threshold = float(unknown_threshold)
        self.parameters = parameters  # None: exported before parameters were kept in the artifact
        self._session = session
        self._labels = np.array(self.persona_ids + [""], dtype=object)
        self._rows_per_call = max(256, min(65536, CELLS_PER_CHUNK // max(width, 1)))

    @classmethod
    def load(cls, record: ModelVersionRecord, artifact: bytes) -> "Predictor":
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # Idle intra-op threads would otherwise spin on cores the gRPC services and
        # the face pipeline share; inference (millions of rows/s) is never the bottleneck.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(artifact, options, providers=["CPUExecutionProvider"])
        import onnx

        graph = onnx.load_from_string(artifact)
        width = sum(int(np.prod(init.dims)) // EMBEDDING_DIM for init in _initializers(graph))
        stored = {entry.key: entry.value for entry in graph.metadata_props}.get(PARAMETERS_KEY)
        parameters = ModelParameters.from_text(stored) if stored else None
        return cls(record.version, record.persona_ids, record.unknown_threshold, session, width, parameters)

    def predict(self, embeddings: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Per row: persona id ("" = unknown) and a confidence in [0, 1] (of
        the persona, or of "unknown" for unknown rows)."""
        return self.verdicts(*self.nearest(embeddings))

    def nearest(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per row: the persona index of the nearest centre not vetoed, its distance and its
        distance threshold (the graph's outputs; index len(persona_ids) in a persona-less model)."""
        x = np.ascontiguousarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != EMBEDDING_DIM:
            raise ValueError(f"embeddings must have shape [n, {EMBEDDING_DIM}], got {list(x.shape)}")
        index = np.empty(len(x), dtype=np.int64)
        distance = np.empty(len(x), dtype=np.float32)
        # Graphs before per-persona thresholds have two outputs: the version's shared one applies.
        limit = np.full(len(x), confidence_to_distance(self.unknown_threshold), dtype=np.float32)
        for start in range(0, len(x), self._rows_per_call):
            stop = start + self._rows_per_call
            outputs = self._session.run(None, {INPUT_NAME: x[start:stop]})
            index[start:stop], distance[start:stop] = outputs[0], outputs[1]
            if len(outputs) > 2:
                limit[start:stop] = outputs[2]
        return index, distance, limit

    def verdicts(self, index: np.ndarray, distance: np.ndarray, limit: np.ndarray) -> tuple[list[str], np.ndarray]:
        """predict's answers from nearest's outputs."""
        confidence = np.nan_to_num(distance_to_confidence(distance), nan=0.0)
        known = (distance <= limit) & (index < len(self.persona_ids))
        persona_ids = self._labels[np.where(known, index, len(self.persona_ids))].tolist()
        return persona_ids, np.where(known, confidence, 1.0 - confidence).astype(np.float32)


def _initializers(model):
    """The graph's [*, 128] matrices (centroids, rejections): sizes the batches."""
    return [init for init in model.graph.initializer if len(init.dims) == 2 and EMBEDDING_DIM in init.dims]


# ---------------------------------------------------------------------------
# Training input, calibration and evaluation
# ---------------------------------------------------------------------------
EVAL_SAMPLE_FACES = 20_000  # faces kept for leave-one-out evaluation (bounded memory and time)


class LabelAccumulator:
    """Builds the training input from streamed chunks of labelled faces, in
    memory bounded by the persona count plus the evaluation sample: each
    persona keeps a running sum; a deterministic sample (by face id hash) of
    the faces is kept for evaluation and calibration."""

    def __init__(self, expected_faces: int, sample_size: int = EVAL_SAMPLE_FACES):
        self.sample_fraction = min(1.0, sample_size / max(expected_faces, 1))
        self.classes: list[str] = []
        self._index: dict[str, int] = {}
        self._sums: list[np.ndarray] = []
        self._counts: list[int] = []
        self._sample_X: list[np.ndarray] = []
        self._sample_y: list[int] = []
        self.sample_ids: list[str] = []
        self.rejected_X: list[np.ndarray] = []
        self.rejected_y: list[str] = []
        self.rejected_ids: list[str] = []

    def _class(self, persona_id: str) -> int:
        if persona_id not in self._index:
            self._index[persona_id] = len(self.classes)
            self.classes.append(persona_id)
            self._sums.append(np.zeros(EMBEDDING_DIM))
            self._counts.append(0)
        return self._index[persona_id]

    def add_belonging(self, face_ids: list[str], persona_ids: list[str], embeddings: np.ndarray) -> None:
        classes = np.array([self._class(p) for p in persona_ids], dtype=np.int64)
        sums = np.zeros((len(self.classes), EMBEDDING_DIM))
        np.add.at(sums, classes, np.asarray(embeddings, dtype=np.float64))
        counts = np.bincount(classes, minlength=len(self.classes))
        for k in np.flatnonzero(counts):
            self._sums[k] += sums[k]
            self._counts[k] += int(counts[k])
        for row, face_id in enumerate(face_ids):
            if in_sample(face_id, self.sample_fraction):
                self._sample_X.append(np.asarray(embeddings[row], dtype=np.float32))
                self._sample_y.append(int(classes[row]))
                self.sample_ids.append(face_id)

    def add_rejected(self, persona_ids: list[str], embeddings: np.ndarray, face_ids: list[str] | None = None) -> None:
        self.rejected_X.extend(np.asarray(embeddings, dtype=np.float32))
        self.rejected_y.extend(persona_ids)
        self.rejected_ids.extend(face_ids if face_ids is not None else [""] * len(persona_ids))

    @property
    def sums(self) -> np.ndarray:
        return np.array(self._sums).reshape(-1, EMBEDDING_DIM)

    @property
    def counts(self) -> np.ndarray:
        return np.array(self._counts, dtype=np.float64)

    @property
    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        return (np.array(self._sample_X, dtype=np.float32).reshape(-1, EMBEDDING_DIM),
                np.array(self._sample_y, dtype=np.int64))

    @property
    def rejected(self) -> np.ndarray:
        return np.array(self.rejected_X, dtype=np.float32).reshape(-1, EMBEDDING_DIM)


def in_sample(face_id: str, fraction: float) -> bool:
    """Deterministic sampling by id hash (the same faces on every run)."""
    if fraction >= 1.0:
        return True
    digest = hashlib.blake2b(face_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


@dataclass
class LeaveOneOut:
    """Per sample face: distance to its own persona's centroid computed
    without it (NaN for a persona's only face), and the nearest other persona."""
    own: np.ndarray
    other: np.ndarray
    other_index: np.ndarray


def leave_one_out(model: OpenSetCentroidClassifier, counts: np.ndarray, X: np.ndarray, y: np.ndarray) -> LeaveOneOut:
    own = np.full(len(X), np.nan)
    other = np.full(len(X), np.inf)
    other_index = np.full(len(X), -1, dtype=np.int64)
    rows = max(1, CELLS_PER_CHUNK // 4 // max(len(model.centroids_), 1))
    for start in range(0, len(X), rows):
        xs, ys = X[start:start + rows], y[start:start + rows]
        d2 = np.maximum(_squared_distances(xs, model.centroids_), 0.0)
        at = np.arange(len(xs))
        n = counts[ys]
        # The centroid without x is (n c - x) / (n - 1), so |x - c'| = n / (n - 1) |x - c|.
        with np.errstate(divide="ignore", invalid="ignore"):
            own[start:start + rows] = np.where(n > 1, np.sqrt(d2[at, ys]) * n / (n - 1), np.nan)
        if d2.shape[1] > 1:
            d2[at, ys] = np.inf
            nearest = d2.argmin(axis=1)
            other[start:start + rows] = np.sqrt(d2[at, nearest])
            other_index[start:start + rows] = nearest
    return LeaveOneOut(own, other, other_index)


def calibrate_threshold(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """Distance threshold with the best balanced accuracy (genuine accepted,
    impostors rejected) on the grid; the default when there is no data."""
    genuine, impostor = np.sort(genuine[np.isfinite(genuine)]), np.sort(impostor[np.isfinite(impostor)])
    if not len(genuine) and not len(impostor):
        return DEFAULT_DISTANCE_THRESHOLD
    score = np.zeros(len(THRESHOLD_GRID))
    if len(genuine):
        score += np.searchsorted(genuine, THRESHOLD_GRID, side="right") / len(genuine)
    if len(impostor):
        score += 1.0 - np.searchsorted(impostor, THRESHOLD_GRID, side="right") / len(impostor)
    best = np.flatnonzero(score >= score.max() - 1e-12)
    # Equally good thresholds span the gap between genuine and impostor
    # distances: take its middle (the widest margin on both sides).
    return float(THRESHOLD_GRID[best[len(best) // 2]])


EXEMPLAR_ROUNDS = 3
EVAL_REJECTED_FACES = 2000  # each is judged on its own (without its veto): bounded time
HELD_OUT_FRACTION = 1 / 3  # of a persona's labelled faces (by face id hash): measured, never calibrated on


def shared_threshold(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """The floor of every persona's threshold: the middle of the gap between
    the 90th percentile of genuine and the 10th percentile of impostor
    distances (percentiles, so one unusual face barely moves it), clamped to
    dlib's same-person range; the default when there is no data."""
    genuine, impostor = genuine[np.isfinite(genuine)], impostor[np.isfinite(impostor)]
    if len(genuine) and len(impostor):
        middle = 0.5 * (np.percentile(genuine, 90) + np.percentile(impostor, 10))
    elif len(genuine):
        middle = np.percentile(genuine, 90) + COVER_MARGIN
    elif len(impostor):
        middle = np.percentile(impostor, 10) - COVER_MARGIN
    else:
        middle = DEFAULT_DISTANCE_THRESHOLD
    return float(np.clip(middle, THRESHOLD_FLOOR, THRESHOLD_CEILING))


def persona_thresholds(shared: float, own_distance: np.ndarray, y: np.ndarray, personas: int) -> np.ndarray:
    """Each persona's threshold: the shared floor, raised just enough to cover
    the persona's own labelled faces given, by at most PERSONA_STRETCH and
    never beyond the ceiling. A labelled face farther out does not stretch it
    (one odd face must not open a persona to strangers): it becomes an exemplar."""
    upper = max(shared, min(THRESHOLD_CEILING, shared + PERSONA_STRETCH))
    distance = np.nan_to_num(own_distance, nan=np.inf) + COVER_MARGIN
    farthest = np.zeros(personas)
    within = distance <= upper
    if within.any():
        np.maximum.at(farthest, y[within], distance[within])
    return np.maximum(shared, farthest).astype(np.float32)


def _held_out(face_ids: list[str], y: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Faces kept out of calibration: a hash-chosen third of the faces of
    personas with 3 or more labelled faces (fewer cannot spare one)."""
    chosen = np.array([in_sample(f"held-out:{face_id}", HELD_OUT_FRACTION) for face_id in face_ids], dtype=bool)
    return chosen & (counts[y] >= 3) if len(y) else chosen


def evaluate(model: OpenSetCentroidClassifier, counts: np.ndarray, X: np.ndarray, y: np.ndarray,
             loo: LeaveOneOut, held: np.ndarray, thresholds: np.ndarray,
             strangers: np.ndarray | None = None) -> dict:
    """Metrics (mirroring resources_pb2.ModelMetrics) on the held-out labelled
    faces, with the thresholds calibrated without them."""
    own, other, other_index, truth = loo.own[held], loo.other[held], loo.other_index[held], y[held]
    own_wins = own <= other
    nearest = np.where(own_wins, truth, other_index)
    distance = np.where(own_wins, own, other)
    limit = thresholds[np.maximum(nearest, 0)] if len(thresholds) else np.zeros(len(nearest))
    predicted = np.where((distance <= limit) & (nearest >= 0), nearest, -1)
    per_persona = []
    final = model.thresholds()
    for k, persona_id in enumerate(model.classes_):
        support = int((truth == k).sum())
        said = predicted == k
        hits = int((said & (truth == k)).sum())
        per_persona.append({"persona_id": persona_id, "support": support,
                            "precision": hits / said.sum() if said.sum() else 0.0,
                            "recall": hits / support if support else 0.0,
                            "threshold": float(distance_to_confidence(final[k]))})
    unknowns = _unknown_outcomes(model, other[np.isfinite(other)], other_index[np.isfinite(other)], thresholds,
                                 strangers)
    correct = sum(int(outcome.sum()) for outcome in unknowns.values())
    total = sum(len(outcome) for outcome in unknowns.values())
    return {
        "accuracy": float((predicted == truth).mean()) if len(truth) else 0.0,
        "unknown_rejection_rate": correct / total if total else 0.0,
        "per_persona": per_persona,
        "labelled_faces": int(counts.sum()),
        "personas": len(model.classes_),
        "evaluated_faces": int(len(truth)),
        "evaluated_unknowns": int(total),
        "evaluation_method": (
            f"{len(truth)} held-out labelled faces (a third of each persona with 3+ faces; thresholds "
            f"calibrated on the other {int(len(y) - held.sum())}), leave-one-out; {total} unknowns: "
            f"{len(unknowns['left_out'])} held-out faces with their persona left out, "
            f"{len(unknowns['rejected'])} faces labelled 'does not belong' (judged without their own label), "
            f"{len(unknowns['strangers'])} unlabelled faces far from every labelled face"),
    }


def _unknown_outcomes(model: OpenSetCentroidClassifier, other: np.ndarray, other_index: np.ndarray,
                      thresholds: np.ndarray, strangers: np.ndarray | None) -> dict[str, np.ndarray]:
    """Per impostor group, whether each face came back not-as-the-impostor-persona."""
    outcomes = {"left_out": other > thresholds[np.maximum(other_index, 0)] if len(thresholds) else
                np.zeros(0, bool)}
    rejected = model.rejected_[:EVAL_REJECTED_FACES]
    if len(rejected):
        # Each rejected face without its own veto: would the model have named it wrongly unlabelled?
        wrong = np.zeros(len(rejected), dtype=bool)
        for j in range(len(rejected)):
            skip = np.zeros(len(model.rejected_), dtype=bool)
            skip[j] = True
            index, distance, limit = model.nearest(rejected[j:j + 1], skip_rejections=skip)
            wrong[j] = index[0] == model.rejected_owner_[j] and distance[0] <= limit[0]
        outcomes["rejected"] = ~wrong
    else:
        outcomes["rejected"] = np.zeros(0, bool)
    if strangers is not None and len(strangers) and len(model.classes_):
        outcomes["strangers"] = model.predict(strangers) == ""
    else:
        outcomes["strangers"] = np.zeros(0, bool)
    return outcomes


def far_from_every_face(candidates: np.ndarray, labelled: np.ndarray, distance: float = THRESHOLD_CEILING
                        ) -> np.ndarray:
    """The candidates (unlabelled faces) farther than `distance` from every labelled face: strangers."""
    if not len(candidates) or not len(labelled):
        return candidates
    nearest = np.full(len(candidates), np.inf)
    for start in range(0, len(labelled), 4096):
        d2 = _squared_distances(candidates, labelled[start:start + 4096])
        nearest = np.minimum(nearest, d2.min(axis=1))
    return candidates[np.sqrt(np.maximum(nearest, 0.0)) > distance]


@dataclass
class TrainedModel:
    model: OpenSetCentroidClassifier
    metrics: dict
    unknown_threshold: float  # the shared threshold (every persona's floor), in confidence units
    persona_ids: list[str] = field(default_factory=list)


def fit_and_evaluate(labels: LabelAccumulator, on_phase=lambda phase: None,
                     strangers: np.ndarray | None = None) -> TrainedModel:
    """Fits centroids, sets the open-set thresholds, makes exemplars of
    labelled faces the centroids would not name right, and evaluates on the
    held-out faces. on_phase("EVALUATING") is called between fitting and evaluation."""
    model = OpenSetCentroidClassifier.from_sums(labels.classes, labels.sums, labels.counts,
                                                labels.rejected, labels.rejected_y)
    on_phase("EVALUATING")
    X, y = labels.sample
    loo = leave_one_out(model, labels.counts, X, y)
    held = _held_out(labels.sample_ids, y, labels.counts)
    calibration = ~held
    model.distance_threshold = shared_threshold(loo.own[calibration], loo.other[calibration])
    own_in_sample = np.linalg.norm(X - model.centroids_[y], axis=1) if len(X) else np.zeros(0)
    personas = len(model.classes_)
    measured_thresholds = persona_thresholds(model.distance_threshold, own_in_sample[calibration], y[calibration],
                                             personas)
    model.persona_thresholds_ = persona_thresholds(model.distance_threshold, own_in_sample, y, personas)
    metrics = evaluate(model, labels.counts, X, y, loo, held, measured_thresholds, strangers)
    # Labels are facts: a labelled face the centroids would not name right becomes an exemplar.
    expected = np.array(model.classes_, dtype=object)[y] if len(X) else np.zeros(0, object)
    for _ in range(EXEMPLAR_ROUNDS):  # a new exemplar may capture a nearby face of another persona
        misnamed = model.predict(X) != expected if len(X) else np.zeros(0, bool)
        if not misnamed.any():
            break
        model.add_exemplars(X[misnamed], y[misnamed])
    return TrainedModel(model, metrics, float(distance_to_confidence(model.distance_threshold)), model.classes_)


def library_versions() -> dict[str, str]:
    import onnx
    import skl2onnx
    import sklearn

    return {"scikit-learn": sklearn.__version__, "skl2onnx": skl2onnx.__version__, "onnx": onnx.__version__,
            "onnxruntime": ort.__version__, "numpy": np.__version__}
