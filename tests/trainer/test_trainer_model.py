"""The model on real dlib embeddings of the shared photos: held-out faces are
recognised, strangers are unknown, rejections are obeyed, and the ONNX
export answers like the scikit-learn estimator."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.neighbors import NearestCentroid

from visage import model as modelling
from visage.store.records import ModelVersionRecord
from visage.v1 import resources_pb2 as pb
from visage_trainer.decisions import CheckSet, FaceSet, gate

from trainer_helpers import held_out


def train(pairs: list[tuple[str, np.ndarray]], rejected: list[tuple[str, np.ndarray]] = ()):
    labels = modelling.LabelAccumulator(len(pairs))
    labels.add_belonging([str(i) for i in range(len(pairs))], [p for p, _ in pairs], np.stack([e for _, e in pairs]))
    if rejected:
        labels.add_rejected([p for p, _ in rejected], np.stack([e for _, e in rejected]))
    trained = modelling.fit_and_evaluate(labels)
    record = ModelVersionRecord(1, pb.MODEL_STATE_ACTIVE, modelling.ALGORITHM, trained.unknown_threshold,
                                trained.persona_ids, trained.metrics, {})
    return trained, modelling.Predictor.load(record, modelling.export_onnx(trained.model))


@pytest.fixture(scope="module")
def split(photos):
    known = [p for p in photos if p.group != "noise"]
    training = [(p.person, p.embedding) for p in known if not held_out(p)]
    testing = [p for p in known if held_out(p)]
    noise = [p for p in photos if p.group == "noise"]
    return training, testing, noise


def test_held_out_faces_are_recognised_and_strangers_are_unknown(split):
    training, testing, noise = split
    trained, predictor = train(training)
    answers, confidences = predictor.predict(np.stack([p.embedding for p in testing]))
    assert answers == [p.person for p in testing]
    assert (confidences >= 0.5).all()  # every persona's threshold is at distance 0.6 or closer
    stranger_answers, _ = predictor.predict(np.stack([p.embedding for p in noise]))
    assert stranger_answers == [""] * len(noise)
    # The thresholds come from the labels, inside dlib's same-person range.
    assert 0.4 <= trained.model.distance_threshold <= 0.6
    assert (trained.model.thresholds() >= trained.model.distance_threshold).all()
    assert (trained.model.thresholds() <= 0.6).all()
    # Measured on held-out faces with thresholds chosen without them: 6 of the 7 (a Stuart photo at
    # distance 0.545 from the other Stuarts is beyond the threshold those chose).
    assert trained.metrics["evaluated_faces"] == 7 and trained.metrics["accuracy"] > 0.8
    assert trained.metrics["labelled_faces"] == len(training)
    assert {m["persona_id"] for m in trained.metrics["per_persona"]} == {p for p, _ in training}


def test_a_rejected_face_is_not_predicted_as_the_persona_it_was_rejected_for(split):
    training, testing, _ = split
    face = testing[0]
    _, before = train(training)
    assert before.predict(face.embedding[None])[0] == [face.person]
    _, after = train(training, rejected=[(face.person, face.embedding)])
    assert after.predict(face.embedding[None])[0] != [face.person]
    # Other faces of that person are still recognised.
    others = [p for p in testing[1:] if p.person != face.person]
    assert after.predict(np.stack([p.embedding for p in others]))[0] == [p.person for p in others]


def test_one_persona_with_one_face_works(split):
    training, testing, noise = split
    obama = [(p, e) for p, e in training if p == "obama"][:1]
    trained, predictor = train(obama)
    assert trained.persona_ids == ["obama"]
    answers, _ = predictor.predict(np.stack([p.embedding for p in testing]))
    assert answers == ["obama" if p.person == "obama" else "" for p in testing]
    # Nothing could be held out: the metrics say so rather than "accuracy 0".
    assert trained.metrics["evaluated_faces"] == 0


def test_rates_say_how_many_faces_they_rest_on(split):
    training, _, noise = split
    one_each = list({person: (person, e) for person, e in training}.values())
    unmeasured, _ = train(one_each)
    assert unmeasured.metrics["evaluated_faces"] == 0 and unmeasured.metrics["accuracy"] == 0.0
    measured, _ = train(training)
    assert measured.metrics["evaluated_faces"] > 0 and measured.metrics["evaluated_unknowns"] > 0
    assert f"{measured.metrics['evaluated_faces']} held-out" in measured.metrics["evaluation_method"]


def test_the_gate_compares_only_faces_the_new_labels_did_not_touch(split):
    training, testing, noise = split
    _, active_model = train(training)
    active = ModelVersionRecord(1, pb.MODEL_STATE_ACTIVE, modelling.ALGORITHM, active_model.unknown_threshold,
                                active_model.persona_ids, {}, {})
    labelled = FaceSet([(f"t{i}", p) for i, (p, _) in enumerate(training)], np.stack([e for _, e in training]))
    strangers = np.stack([p.embedding for p in noise])
    live = set(active_model.persona_ids)
    # A stranger labelled as Amy: the candidate names that stranger Amy (the label's own effect).
    stranger = noise[0]
    _, candidate = train(training + [("amy", stranger.embedding)])
    with_label = FaceSet(labelled.pairs + [("s0", "amy")], np.concatenate([labelled.X, stranger.embedding[None]]))
    touched = CheckSet(with_label, FaceSet(), {"s0"}, strangers[1:])
    verdict = gate(candidate, active, active_model, touched, live, 0.0, {})
    assert verdict.passed, verdict.reason
    # Had that face not been labelled by the new labels, naming it would be a regression.
    untouched = CheckSet(labelled, FaceSet(), set(), strangers)
    verdict = gate(candidate, active, active_model, untouched, live, 0.0, {"amy": "Amy"})
    assert not verdict.passed and verdict.reason.startswith("rejected") and "Amy" in verdict.reason
    assert verdict.persona_ids == {"amy"}


def test_onnx_agrees_with_scikit_learn(split, photos):
    training, _, _ = split
    everything = np.stack([p.embedding for p in photos])
    trained, predictor = train(training, rejected=[("amy", photos[0].embedding)])
    onnx_answers, onnx_confidences = predictor.predict(everything)
    assert onnx_answers == [str(a) for a in trained.model.predict(everything)]
    _, distance, _ = trained.model.nearest(everything)
    np.testing.assert_allclose(onnx_confidences[[a != "" for a in onnx_answers]],
                               modelling.distance_to_confidence(distance)[[a != "" for a in onnx_answers]],
                               atol=1e-4)
    # Without rejections, the closed-set answer is scikit-learn's NearestCentroid.
    X, y = np.stack([e for _, e in training]), [p for p, _ in training]
    plain = modelling.OpenSetCentroidClassifier().fit(X, y)
    reference = NearestCentroid().fit(X, y)
    index, _, _ = plain.nearest(everything)
    assert [plain.classes_[i] for i in index] == list(reference.predict(everything))


def test_predictor_is_batched_and_checks_shape(split):
    training, _, _ = split
    _, predictor = train(training)
    rows = np.random.default_rng(0).normal(size=(200_000, 128)).astype(np.float32) * 0.1
    answers, confidences = predictor.predict(rows)
    assert len(answers) == len(rows) and confidences.dtype == np.float32
    assert ((confidences >= 0) & (confidences <= 1)).all()
    assert predictor.predict(np.zeros((0, 128), np.float32))[0] == []
    with pytest.raises(ValueError, match="shape"):
        predictor.predict(np.zeros((3, 64), np.float32))


def test_one_face_moves_no_other_personas_threshold_and_a_not_label_moves_none(split):
    training, testing, noise = split
    before, _ = train(training)
    stuart = before.persona_ids.index("stuart")
    # "Not Stuart" on a stranger: no threshold moves, every labelled Stuart photo stays Stuart.
    not_stuart, predictor = train(training, rejected=[("stuart", noise[0].embedding)])
    np.testing.assert_array_equal(not_stuart.model.thresholds(), before.model.thresholds())
    stuarts = [e for p, e in training if p == "stuart"]
    assert predictor.predict(np.stack(stuarts))[0] == ["stuart"] * len(stuarts)
    # An odd face labelled Penny (a stranger's): only Penny's threshold may move, and strangers stay unknown.
    odd, predictor = train(training + [("penny", noise[1].embedding)])
    penny = odd.persona_ids.index("penny")
    others = [k for k in range(len(odd.persona_ids)) if k != penny]
    assert abs(odd.model.distance_threshold - before.model.distance_threshold) < 0.01
    assert (odd.model.thresholds()[others] <= before.model.thresholds()[others] + 0.01).all()
    assert odd.model.thresholds()[penny] <= odd.model.distance_threshold + modelling.PERSONA_STRETCH
    assert predictor.predict(noise[1].embedding[None])[0] == ["penny"]  # the label itself is honoured
    assert predictor.predict(np.stack([p.embedding for p in noise[2:]]))[0] == [""] * (len(noise) - 2)
    assert stuart == odd.persona_ids.index("stuart")


def test_confidence_is_the_similarity_to_the_persona(split):
    training, testing, noise = split
    trained, predictor = train(training)
    X = np.stack([p.embedding for p in testing + noise])
    answers, confidences = predictor.predict(X)
    _, distance, _ = trained.model.nearest(X)
    similarity = 1 - distance / modelling.DISTANCE_SCALE
    named = np.array([a != "" for a in answers])
    np.testing.assert_allclose(confidences[named], similarity[named], atol=1e-4)
    np.testing.assert_allclose(confidences[~named], 1 - similarity[~named], atol=1e-4)
    thresholds = {m["persona_id"]: m["threshold"] for m in trained.metrics["per_persona"]}
    assert all(c >= thresholds[a] - 1e-4 for a, c in zip(answers, confidences) if a)


def test_the_artifact_keeps_its_parameters_and_a_label_changes_only_its_personas(split):
    """What incremental re-classification rests on: a version's artifact carries its
    parameters; one more label changes the centres of the personas it touches only (and at most
    moves thresholds: faces change sides only within the bands); a veto changes its persona."""
    training, _testing, _noise = split
    trained, predictor = train(training)
    old = predictor.parameters
    assert old is not None and old.persona_ids == trained.persona_ids
    person, embedding = training[-1]
    other = next(p for p, _ in training if p != person)
    _retrained, repredictor = train(training + [(other, embedding)])  # a lookalike labelled as someone else
    new = repredictor.parameters
    changed = modelling.changed_personas(old, new)
    assert other in changed and changed <= {other, person}  # the face's own persona may gain an exemplar
    for persona_id, (low, high) in modelling.threshold_bands(old, new, set(old.persona_ids) - changed).items():
        k = old.persona_ids.index(persona_id)
        moved = old.limits_of(k) != new.limits_of(k)
        assert moved.any() and low == min(old.limits_of(k)[moved].min(), new.limits_of(k)[moved].min())
    assert modelling.changed_personas(old, train(training)[1].parameters) == set()
    _rejected, vetoed = train(training, rejected=[(person, training[0][1])])
    assert modelling.changed_personas(old, vetoed.parameters) == {person}
