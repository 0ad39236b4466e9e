"""What becomes of a trained version, and why, in plain words:
- labels are facts: before a version is stored the trainer asserts, on the
  exported graph, that every label is honoured (`unhonoured_labels`);
- the gate compares the candidate with the active version only on faces the
  new labels did not touch (labelled faces and strangers), so a label's own
  effect is never counted as a regression;
- a version activated by hand is pinned: later versions are stored and
  listed, not activated, until the pin is released;
- a rejection is an event (MODEL_VERSION_REJECTED) naming the personas it affects;
- a candidate stored but not decided (the trainer died in between) is decided
  when the trainer starts again;
- retention keeps the newest N models plus the active and pinned ones."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from visage import model as modelling
from visage.store.base import NotFound, Store, Withdrawn
from visage.store.records import ModelVersionRecord
from visage.v1 import resources_pb2 as pb

PIN_META_KEY = "trainer.pinned_version"
PENDING = ""  # gate_reason of a stored candidate whose decision is not made yet
RETENTION_NOTE = "model deleted by retention"
HAND_NOTE = "activated by hand"
NEAR_DUPLICATE_DISTANCE = 0.03  # far below any two photos of different people (dlib: > 0.4)
STRANGER_CANDIDATES = 5000  # unlabelled faces looked at for strangers (bounded time at any scale)
STRANGER_SCAN = 50_000  # faces scanned for them at most (a store of labelled faces has few)
GATE_FACES = 5000  # untouched labelled faces the gate compares (a deterministic sample beyond that)
READ_CHUNK = 2000
# Decisions change which version is active: one at a time (trainer worker vs pin RPCs).
DECISION_LOCK = threading.RLock()


class ModelGone(Exception):
    """The version's model was deleted by retention."""


@dataclass
class FaceSet:
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (face id, persona id)
    X: np.ndarray = field(default_factory=lambda: np.zeros((0, 128), np.float32))


@dataclass
class CheckSet:
    """The faces the honour assertion and the gate look at."""
    belonging: FaceSet
    rejected: FaceSet
    touched: set[str]  # faces with a label newer than the active version
    strangers: np.ndarray  # unlabelled faces far from every labelled face


def _read(store: Store, pairs: list[tuple[str, str]]) -> FaceSet:
    found, rows = [], []
    for start in range(0, len(pairs), READ_CHUNK):
        chunk = dict(pairs[start:start + READ_CHUNK])
        for face in store.get_faces(chunk):
            found.append((face.face_id, chunk[face.face_id]))
            rows.append(face.embedding)
    return FaceSet(found, np.asarray(rows, np.float32).reshape(-1, 128))


def check_set(store: Store, labels, accumulator: modelling.LabelAccumulator, since: float) -> CheckSet:
    """The faces to check, from the training input already read: the sampled
    "belongs" faces (all of them up to EVAL_SAMPLE_FACES) plus any label newer
    than `since` outside the sample, every "not" face, and strangers."""
    touched = {face for (face, _), created in labels.times.items() if created > since}
    X, y = accumulator.sample
    sampled = set(accumulator.sample_ids)
    belonging = FaceSet(list(zip(accumulator.sample_ids, [accumulator.classes[k] for k in y])), X)
    extra = _read(store, [(f, p) for f, p in labels.belonging if f in touched and f not in sampled])
    belonging = FaceSet(belonging.pairs + extra.pairs, np.concatenate([belonging.X, extra.X]))
    rejected = FaceSet(list(zip(accumulator.rejected_ids, accumulator.rejected_y)), accumulator.rejected)
    labelled = {face for face, _ in labels.belonging} | {face for face, _ in labels.rejected}
    candidates, scanned = [], 0
    for face_ids, embeddings in store.iter_embeddings():
        candidates.extend(e for f, e in zip(face_ids, embeddings) if f not in labelled)
        scanned += len(face_ids)
        if len(candidates) >= STRANGER_CANDIDATES or scanned >= STRANGER_SCAN:
            break
    strangers = modelling.far_from_every_face(np.asarray(candidates[:STRANGER_CANDIDATES], np.float32).reshape(-1, 128),
                                              np.concatenate([belonging.X, rejected.X]))
    return CheckSet(belonging, rejected, touched, strangers)


def near_duplicates(X: np.ndarray) -> np.ndarray:
    """A copy of each face moved NEAR_DUPLICATE_DISTANCE (deterministic)."""
    step = np.random.default_rng(0).normal(size=X.shape).astype(np.float32)
    step *= NEAR_DUPLICATE_DISTANCE / np.linalg.norm(step, axis=1, keepdims=True)
    return X + step


def unhonoured_labels(predictor: modelling.Predictor, checks: CheckSet, names: dict[str, str]) -> list[str]:
    """Labels the version would contradict, in plain words (empty: all honoured)."""
    problems = []
    if checks.belonging.pairs:
        said, _ = predictor.predict(checks.belonging.X)
        problems += [f"face {face} is labelled {names.get(p, p)} but would be {names.get(s, s) or 'unknown'}"
                     for (face, p), s in zip(checks.belonging.pairs, said) if s != p]
    if checks.rejected.pairs:
        for X, what in ((checks.rejected.X, "it"), (near_duplicates(checks.rejected.X), "a near duplicate")):
            said, _ = predictor.predict(X)
            problems += [f"face {face} is labelled 'not {names.get(p, p)}' but {what} would be {names.get(p, p)}"
                         f"{_closest_label(checks.belonging, X[j], p)}"
                         for j, ((face, p), s) in enumerate(zip(checks.rejected.pairs, said)) if s == p]
    return problems


def _closest_label(belonging: FaceSet, embedding: np.ndarray, persona_id: str) -> str:
    """Which "belongs" label a contradicted "not" label collides with, in words."""
    rows = [i for i, (_, p) in enumerate(belonging.pairs) if p == persona_id]
    if not rows:
        return ""
    distance = np.linalg.norm(belonging.X[rows] - embedding, axis=1)
    nearest = int(distance.argmin())
    return f" (face {belonging.pairs[rows[nearest]][0]}, labelled so, is at distance {distance[nearest]:.3f})"


@dataclass
class Verdict:
    passed: bool
    reason: str
    persona_ids: set[str] = field(default_factory=set)  # personas whose faces would get worse


def gate(candidate: modelling.Predictor, active: ModelVersionRecord | None, active_model: modelling.Predictor | None,
         checks: CheckSet, live_persona_ids: set[str], margin: float, names: dict[str, str]) -> Verdict:
    """Whether a candidate may replace the active version: it may not get more
    than `margin` (a share) of the faces the new labels did not touch wrong
    that the active version got right."""
    if active is None:
        return Verdict(True, "first version: activated without comparison")
    deleted = set(active.persona_ids) - live_persona_ids
    if deleted:
        return Verdict(True, f"active version {active.version} names {len(deleted)} deleted persona(s); "
                             "replaced regardless")
    if active_model is None:
        return Verdict(True, f"active version {active.version} has no stored model to compare with")
    expected, faces, kinds = [], [], []
    for kind, face_set in (("belongs", checks.belonging), ("not", checks.rejected)):
        fraction = min(1.0, GATE_FACES / max(len(face_set.pairs), 1))
        keep = [i for i, (face, _) in enumerate(face_set.pairs)
                if face not in checks.touched and modelling.in_sample(f"gate:{face}", fraction)]
        expected += [face_set.pairs[i][1] for i in keep]
        faces.append(face_set.X[keep])
        kinds += [kind] * len(keep)
    strangers = _away_from_new_labels(checks)
    expected += [""] * len(strangers)
    kinds += ["stranger"] * len(strangers)
    X = np.concatenate(faces + [strangers]).astype(np.float32)
    if not len(X):
        return Verdict(True, f"no face untouched by the new labels to compare with active version {active.version}")
    new, _ = candidate.predict(X)
    old, _ = active_model.predict(X)
    right_new = np.array([_right(k, e, s) for k, e, s in zip(kinds, expected, new)])
    right_old = np.array([_right(k, e, s) for k, e, s in zip(kinds, expected, old)])
    worse = np.flatnonzero(right_old & ~right_new)
    better = int((~right_old & right_new).sum())
    summary = (f"{len(worse)} of {len(X)} faces the new labels did not touch would be named worse than by active "
               f"version {active.version}, {better} better ({len(checks.touched)} faces with new labels not "
               f"compared: their labels decide them)")
    if len(worse) > margin * len(X):
        affected = {expected[i] or new[i] for i in worse} - {""}
        who = ", ".join(sorted(names.get(p, p) for p in affected)) or "strangers"
        return Verdict(False, f"rejected: {summary}; affected: {who}; allowed: {margin:.0%}", affected)
    return Verdict(True, f"no regression beyond {margin:.0%}: {summary}")


def _away_from_new_labels(checks: CheckSet) -> np.ndarray:
    """Strangers a new label cannot have changed: farther than dlib's
    same-person distance from every newly labelled face (one nearer may
    rightly be named like that face now: the label's own effect)."""
    new = [face_set.X[[i for i, (face, _) in enumerate(face_set.pairs) if face in checks.touched]]
           for face_set in (checks.belonging, checks.rejected)]
    return modelling.far_from_every_face(checks.strangers, np.concatenate(new).reshape(-1, 128))


def _right(kind: str, expected: str, said: str) -> bool:
    return said == expected if kind != "not" else said != expected


def load_predictor(store: Store, record: ModelVersionRecord | None) -> modelling.Predictor | None:
    artifact = store.get_model_artifact(record.version) if record else None
    return modelling.Predictor.load(record, artifact) if artifact else None


def persona_names(store: Store) -> dict[str, str]:
    return {p.persona_id: p.display_name for p in store.list_personas()}


def pinned_version(store: Store) -> int:
    return int(store.get_meta(PIN_META_KEY) or 0)


def decide(store: Store, record: ModelVersionRecord, checks: CheckSet, margin: float,
           labels_asserted: bool = False) -> tuple[bool, str]:
    """Activates, holds (pinned) or rejects a stored candidate; returns
    (activated, reason). labels_asserted: the trainer already checked, on
    this very graph, that it honours every label in `checks`."""
    with DECISION_LOCK:
        names = persona_names(store)
        active = store.active_model_version()
        candidate = load_predictor(store, record)
        problems = [] if labels_asserted else unhonoured_labels(candidate, checks, names)
        if problems:
            verdict = Verdict(False, f"rejected: {len(problems)} label(s) not honoured: {'; '.join(problems[:5])}")
        else:
            verdict = gate(candidate, active, load_predictor(store, active), checks, set(names), margin, names)
        pinned = pinned_version(store)
        # An erasure may withdraw the version while the gate decides: the withdrawal stands.
        if not verdict.passed:
            if not store.record_gate_decision(record.version, pb.MODEL_STATE_REJECTED, verdict.reason):
                return False, _withdrawn_meanwhile(record)
            record.state, record.gate_reason = pb.MODEL_STATE_REJECTED, verdict.reason
            store.append_event(pb.EVENT_TYPE_MODEL_VERSION_REJECTED, str(record.version), {
                "reason": verdict.reason, "persona_ids": ",".join(sorted(verdict.persona_ids)),
                "active_version": str(active.version if active else 0)})
            return False, verdict.reason
        if pinned:
            reason = (f"{verdict.reason}; not activated: version {pinned} was activated by hand and is "
                      "pinned (release the pin to activate)")
            if not store.record_gate_decision(record.version, pb.MODEL_STATE_CANDIDATE, reason):
                return False, _withdrawn_meanwhile(record)
            record.gate_reason = reason
            return False, reason
        try:
            store.activate_model_version(record.version, gate_reason=verdict.reason)
        except Withdrawn as withdrawn:  # an erasure raced this training: its labels are gone
            return False, str(withdrawn)
        return True, verdict.reason


def _withdrawn_meanwhile(record: ModelVersionRecord) -> str:
    return (f"version {record.version} was withdrawn while the gate decided on it (an erasure of labels "
            "it was trained on); it stays withdrawn")


def activate_by_hand(store: Store, version: int) -> ModelVersionRecord:
    """Activates and pins a version, whatever the gate said (raises NotFound, ModelGone)."""
    with DECISION_LOCK:
        record = store.get_model_version(version)
        if record is None:
            raise NotFound(f"model version {version} not found")
        if store.get_model_artifact(version) is None:
            raise ModelGone(f"model version {version} cannot be activated: its model was deleted by retention")
        reason = None if HAND_NOTE in record.gate_reason else \
            f"{HAND_NOTE}, pinned; the gate said: {record.gate_reason or 'no gate decision'}"
        activated = store.activate_model_version(version, gate_reason=reason)
        store.set_meta(PIN_META_KEY, str(version))
        return activated


def release_pin(store: Store) -> ModelVersionRecord | None:
    """Activates the newest version held back by the pin that can still serve (its
    model kept by retention, not withdrawn by an erasure), then ends the pin: a
    failed activation leaves the pin in place."""
    with DECISION_LOCK:
        pinned = pinned_version(store)
        held = [v for v in store.list_model_versions()
                if v.version > pinned and v.state == pb.MODEL_STATE_CANDIDATE and v.gate_reason != PENDING]
        for candidate in held if pinned else []:
            if store.get_model_artifact(candidate.version) is None:
                continue
            reason = (candidate.gate_reason.split("; not activated")[0]
                      + f"; activated when the pin on version {pinned} was released")
            try:
                store.activate_model_version(candidate.version, gate_reason=reason)
            except Withdrawn:
                continue
            break
        store.set_meta(PIN_META_KEY, "0")
        return store.active_model_version()


def undecided_candidates(store: Store) -> list[ModelVersionRecord]:
    """Versions stored as candidates whose decision a crash cut off, oldest first."""
    return [v for v in reversed(store.list_model_versions())
            if v.state == pb.MODEL_STATE_CANDIDATE and v.gate_reason == PENDING]


def apply_retention(store: Store, keep: int) -> list[int]:
    """Deletes the models of versions beyond the newest `keep`, except the
    active and pinned ones; returns the versions whose model went."""
    if keep <= 0:
        return []
    active = store.active_model_version()
    protected = {active.version if active else 0, pinned_version(store)}
    deleted = []
    for record in store.list_model_versions()[keep:]:
        if record.version in protected or RETENTION_NOTE in record.gate_reason:
            continue
        if store.delete_model_artifact(record.version):
            record.gate_reason = f"{record.gate_reason} · {RETENTION_NOTE}"
            store.update_model_version(record)
            deleted.append(record.version)
    return deleted
