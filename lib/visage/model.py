"""The classifier model: how labels become a model, how it is evaluated and
exported to ONNX, and the `Predictor` that runs it (onnxruntime).

Model: an open-set nearest-centroid classifier over the 128-d dlib embeddings.
- One centroid per persona, the mean of the faces labelled as belonging to it.
  dlib embeddings are trained for euclidean distance (same person < ~0.6), so
  the nearest centroid is a strong classifier; it needs no second class (one
  persona works), a single face is a valid centroid, and fitting is a streaming
  sum (1M faces / 10k personas fit in seconds, in bounded memory).
- Open set: a face farther than a calibrated distance from its nearest
  centroid is "unknown". The threshold is chosen on leave-one-out distances of
  the labelled faces (genuine vs impostor) and stored with the version, in
  confidence units (confidence = 1 - distance / DISTANCE_SCALE).
- "Does not belong" labels: each rejected face vetoes its persona for every
  query that is closer to the rejected face than to that persona's centroid
  (the rejected face itself and its near duplicates); the next-nearest
  persona may then answer, or "unknown".

The estimator is a scikit-learn estimator (`OpenSetCentroidClassifier`); it is
exported through skl2onnx with a registered converter, and `Predictor` runs
the ONNX graph. Tests check that ONNX and the estimator agree.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort
from sklearn.base import BaseEstimator

from visage.store.records import EMBEDDING_DIM, ModelVersionRecord

ALGORITHM = "sklearn-open-set-nearest-centroid+onnx"
DISTANCE_SCALE = 1.2  # distance at which confidence reaches 0 (twice dlib's 0.6)
DEFAULT_DISTANCE_THRESHOLD = 0.5  # used when the labels say nothing about it
THRESHOLD_GRID = np.round(np.arange(0.35, 0.6001, 0.005), 3)  # dlib: same person is usually < 0.6
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
    """Nearest persona centroid with rejection vetoes and a distance threshold.

    classes_: persona ids (model output order); centroids_: [K, 128];
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
        index = {persona: i for i, persona in enumerate(self.classes_)}
        keep = [i for i, p in enumerate(rejected_y if rejected_y is not None else []) if p in index]
        # Only rejections of modelled personas can veto anything.
        rejected = np.asarray(rejected_X if keep else np.zeros((0, EMBEDDING_DIM)), dtype=np.float32)
        self.rejected_ = rejected.reshape(-1, EMBEDDING_DIM)[keep] if keep else np.zeros((0, EMBEDDING_DIM), np.float32)
        self.rejected_owner_ = np.array([index[rejected_y[i]] for i in keep], dtype=np.int64)

    # -- the graph's centres: a sentinel keeps a persona-less model valid ----
    def graph_centroids(self) -> np.ndarray:
        if len(self.centroids_):
            return self.centroids_
        return np.full((1, EMBEDDING_DIM), SENTINEL_COORDINATE, dtype=np.float32)

    def nearest(self, X: np.ndarray, skip_rejections: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(index of the nearest non-vetoed centroid, its distance) per row;
        the reference computation the ONNX graph mirrors."""
        X = np.asarray(X, dtype=np.float32).reshape(-1, EMBEDDING_DIM)
        d2 = _squared_distances(X, self.graph_centroids())
        if len(self.rejected_):
            rejected, owner = self.rejected_, self.rejected_owner_
            if skip_rejections is not None:
                rejected, owner = rejected[~skip_rejections], owner[~skip_rejections]
            d2r = _squared_distances(X, rejected)
            vetoed = (d2r < d2[:, owner]).astype(np.float32) @ _one_hot(owner, d2.shape[1])
            d2 = d2 + vetoed * VETO_PENALTY
        index = d2.argmin(axis=1)
        return index.astype(np.int64), np.sqrt(np.maximum(d2[np.arange(len(X)), index], 0.0))

    def predict(self, X) -> np.ndarray:
        """Persona id per row, "" for unknown."""
        index, distance = self.nearest(X)
        labels = np.array(self.classes_ + [""], dtype=object)
        known = (distance <= self.distance_threshold) & (index < len(self.classes_))
        return labels[np.where(known, index, len(self.classes_))]


def _one_hot(owner: np.ndarray, width: int) -> np.ndarray:
    matrix = np.zeros((len(owner), width), dtype=np.float32)
    matrix[np.arange(len(owner)), owner] = 1.0
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
        return operator.outputs

    def shape_calculator(operator):
        rows = operator.inputs[0].get_first_dimension()
        operator.outputs[0].type = Int64TensorType([rows])
        operator.outputs[1].type = FloatTensorType([rows])

    def squared_distances(x, x_norms, centres, opv):
        cross = OnnxMatMul(x, centres.T.copy(), op_version=opv)
        centre_norms = np.einsum("ij,ij->i", centres, centres)[None, :].astype(np.float32)
        return OnnxAdd(OnnxSub(x_norms, OnnxMul(cross, np.array([2.0], np.float32), op_version=opv),
                               op_version=opv), centre_norms, op_version=opv)

    def converter(scope, operator, container):
        model: OpenSetCentroidClassifier = operator.raw_operator
        opv = container.target_opset
        x = operator.inputs[0]
        x_norms = OnnxReduceSumSquare(x, axes=[1], keepdims=1, op_version=opv)
        d2 = squared_distances(x, x_norms, model.graph_centroids(), opv)
        if len(model.rejected_):
            d2r = squared_distances(x, x_norms, model.rejected_, opv)
            owner_d2 = OnnxGather(d2, model.rejected_owner_, axis=1, op_version=opv)
            closer = OnnxCast(OnnxLess(d2r, owner_d2, op_version=opv), to=TensorProto.FLOAT, op_version=opv)
            vetoes = OnnxMatMul(closer, _one_hot(model.rejected_owner_, len(model.graph_centroids())),
                                op_version=opv)
            d2 = OnnxAdd(d2, OnnxMul(vetoes, np.array([VETO_PENALTY], np.float32), op_version=opv),
                         op_version=opv)
        index = OnnxArgMin(d2, axis=1, keepdims=0, op_version=opv, output_names=operator.outputs[:1])
        nearest = OnnxReduceMin(d2, axes=[1], keepdims=0, op_version=opv)
        distance = OnnxSqrt(OnnxMax(nearest, np.array([0.0], np.float32), op_version=opv),
                            op_version=opv, output_names=operator.outputs[1:])
        index.add_to(scope, container)
        distance.add_to(scope, container)

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
    return onnx_model.SerializeToString()


# ---------------------------------------------------------------------------
# Runtime
# ---------------------------------------------------------------------------
class Predictor:
    """Runs one stored model version with onnxruntime. Thread-safe (an
    InferenceSession may be run from several threads)."""

    def __init__(self, version: int, persona_ids: list[str], unknown_threshold: float,
                 session: ort.InferenceSession, width: int):
        self.version = version
        self.persona_ids = list(persona_ids)
        self.unknown_threshold = float(unknown_threshold)
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
        width = sum(int(np.prod(init.dims)) // EMBEDDING_DIM for init in _initializers(artifact))
        return cls(record.version, record.persona_ids, record.unknown_threshold, session, width)

    def predict(self, embeddings: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Per row: persona id ("" = unknown) and a confidence in [0, 1] (of
        the persona, or of "unknown" for unknown rows)."""
        x = np.ascontiguousarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != EMBEDDING_DIM:
            raise ValueError(f"embeddings must have shape [n, {EMBEDDING_DIM}], got {list(x.shape)}")
        if not len(x):
            return [], np.zeros(0, dtype=np.float32)
        index = np.empty(len(x), dtype=np.int64)
        distance = np.empty(len(x), dtype=np.float32)
        for start in range(0, len(x), self._rows_per_call):
            stop = start + self._rows_per_call
            index[start:stop], distance[start:stop] = self._session.run(None, {INPUT_NAME: x[start:stop]})
        confidence = np.nan_to_num(distance_to_confidence(distance), nan=0.0)
        known = (confidence >= self.unknown_threshold) & (index < len(self.persona_ids))
        persona_ids = self._labels[np.where(known, index, len(self.persona_ids))].tolist()
        return persona_ids, np.where(known, confidence, 1.0 - confidence).astype(np.float32)


def _initializers(artifact: bytes):
    """The graph's [*, 128] matrices (centroids, rejections): sizes the batches."""
    import onnx

    graph = onnx.load_from_string(artifact).graph
    return [init for init in graph.initializer if len(init.dims) == 2 and EMBEDDING_DIM in init.dims]


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
        self.rejected_X: list[np.ndarray] = []
        self.rejected_y: list[str] = []

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
            if _in_sample(face_id, self.sample_fraction):
                self._sample_X.append(np.asarray(embeddings[row], dtype=np.float32))
                self._sample_y.append(int(classes[row]))

    def add_rejected(self, persona_ids: list[str], embeddings: np.ndarray) -> None:
        self.rejected_X.extend(np.asarray(embeddings, dtype=np.float32))
        self.rejected_y.extend(persona_ids)

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


def _in_sample(face_id: str, fraction: float) -> bool:
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


def evaluate(model: OpenSetCentroidClassifier, counts: np.ndarray, X: np.ndarray, y: np.ndarray,
             loo: LeaveOneOut) -> dict:
    """Metrics (mirroring resources_pb2.ModelMetrics) at the model's threshold."""
    threshold = model.distance_threshold
    held_out = np.isfinite(loo.own)
    own_wins = loo.own[held_out] <= loo.other[held_out]
    nearest = np.where(own_wins, y[held_out], loo.other_index[held_out])
    distance = np.where(own_wins, loo.own[held_out], loo.other[held_out])
    predicted = np.where(distance <= threshold, nearest, -1)
    truth = y[held_out]
    per_persona = []
    for k, persona_id in enumerate(model.classes_):
        support = int((truth == k).sum())
        said = predicted == k
        hits = int((said & (truth == k)).sum())
        per_persona.append({"persona_id": persona_id, "support": support,
                            "precision": hits / said.sum() if said.sum() else 0.0,
                            "recall": hits / support if support else 0.0})
    unknown_correct, unknown_total = _unknown_rejections(model, loo)
    return {
        "accuracy": float((predicted == truth).mean()) if len(truth) else 0.0,
        "unknown_rejection_rate": unknown_correct / unknown_total if unknown_total else 0.0,
        "per_persona": per_persona,
        "labelled_faces": int(counts.sum()),
        "personas": len(model.classes_),
        "evaluated_faces": int(len(truth)),
        "evaluated_unknowns": int(unknown_total),
        "evaluation_method": (f"leave-one-out on {len(truth)} of {int(counts.sum())} labelled faces; "
                              f"{unknown_total} unknowns (leave-one-persona-out and rejected faces); "
                              "threshold calibrated on the same distances"),
    }


def _unknown_rejections(model: OpenSetCentroidClassifier, loo: LeaveOneOut) -> tuple[int, int]:
    """Faces whose persona is left out of the model should come back unknown;
    a rejected face should not come back as the persona it was rejected for
    (judged without its own veto)."""
    threshold = model.distance_threshold
    correct = total = 0
    if len(model.classes_) > 1:
        correct += int((loo.other > threshold).sum())
        total += len(loo.other)
    rejected = model.rejected_[:EVAL_SAMPLE_FACES]
    if len(rejected):
        d2 = _squared_distances(rejected, model.centroids_)
        nearest = d2.argmin(axis=1)
        as_rejected_persona = (nearest == model.rejected_owner_[:EVAL_SAMPLE_FACES]) & (
            np.sqrt(np.maximum(d2[np.arange(len(rejected)), nearest], 0.0)) <= threshold)
        correct += int((~as_rejected_persona).sum())
        total += len(rejected)
    return correct, total


@dataclass
class TrainedModel:
    model: OpenSetCentroidClassifier
    metrics: dict
    unknown_threshold: float  # in confidence units, as stored with the version
    persona_ids: list[str] = field(default_factory=list)


def fit_and_evaluate(labels: LabelAccumulator, on_phase=lambda phase: None) -> TrainedModel:
    """Fits centroids, calibrates the open-set threshold and evaluates.
    on_phase("EVALUATING") is called between fitting and evaluation."""
    model = OpenSetCentroidClassifier.from_sums(labels.classes, labels.sums, labels.counts,
                                                labels.rejected, labels.rejected_y)
    on_phase("EVALUATING")
    X, y = labels.sample
    loo = leave_one_out(model, labels.counts, X, y)
    impostor = [loo.other]
    if len(model.rejected_):
        rejected = model.rejected_[:EVAL_SAMPLE_FACES]
        d2 = _squared_distances(rejected, model.centroids_)
        impostor.append(np.sqrt(np.maximum(d2[np.arange(len(rejected)), model.rejected_owner_[:len(rejected)]], 0)))
    model.distance_threshold = calibrate_threshold(loo.own, np.concatenate(impostor))
    metrics = evaluate(model, labels.counts, X, y, loo)
    return TrainedModel(model, metrics, float(distance_to_confidence(model.distance_threshold)), model.classes_)


def library_versions() -> dict[str, str]:
    import onnx
    import skl2onnx
    import sklearn

    return {"scikit-learn": sklearn.__version__, "skl2onnx": skl2onnx.__version__, "onnx": onnx.__version__,
            "onnxruntime": ort.__version__, "numpy": np.__version__}
