"""Candidates follow the exported graph's own rule where it is hardest: per-persona
thresholds, exemplars (extra centres) and "does not belong" vetoes, on the real embeddings
of the shared crops. The first candidate is always the graph's answer (its persona when it
names one, within the threshold; outside it when the graph says unknown)."""
from __future__ import annotations

import numpy as np

from visage.model import OpenSetCentroidClassifier, Predictor, distance_to_confidence, export_onnx
from visage.store.records import ModelVersionRecord
from visage.v1 import resources_pb2 as pb
from visage_classifier.candidates import candidate_model


def test_first_candidate_is_the_graphs_answer_with_exemplars_thresholds_and_vetoes(crop_embeddings):
    names = sorted(crop_embeddings)
    X = np.stack([row for name in names for row in crop_embeddings[name][:4]]).astype(np.float32)
    y = [name for name in names for _ in crop_embeddings[name][:4]]
    held_out = np.stack([crop_embeddings[name][4] for name in names]).astype(np.float32)
    # Penny's held-out crop is "not amy" and Amy's is "not penny": vetoes next to real faces.
    rejected_X = np.stack([crop_embeddings["penny"][4], crop_embeddings["amy"][4]])
    estimator = OpenSetCentroidClassifier(0.45).fit(X, y, rejected_X=rejected_X, rejected_y=["amy", "penny"])
    estimator.persona_thresholds_ = np.linspace(0.42, 0.58, len(names)).astype(np.float32)
    estimator.add_exemplars(held_out[:3], np.arange(3))  # three personas get an extra centre
    record = ModelVersionRecord(1, pb.MODEL_STATE_ACTIVE, "test", persona_ids=estimator.classes_,
                                unknown_threshold=float(distance_to_confidence(0.45)), metrics={}, lineage={})
    predictor = Predictor.load(record, export_onnx(estimator))
    model = candidate_model(predictor)
    rng = np.random.default_rng(3)
    queries = np.concatenate([X, held_out, rejected_X,
                              X + rng.normal(0, 0.03, X.shape).astype(np.float32),
                              held_out + rng.normal(0, 0.05, held_out.shape).astype(np.float32)])
    persona_ids, confidences = predictor.predict(queries)
    found = model.candidates(queries, 3)
    named = 0
    for persona_id, confidence, candidates in zip(persona_ids, confidences, found):
        first = candidates[0]
        distances = [c.distance for c in candidates]
        assert distances == sorted(distances)
        if persona_id:
            named += 1
            assert model.persona_ids[first.persona] == persona_id and first.within
            # The graph's float32 expansion |x|^2 - 2x.c + |c|^2 leaves ~1e-6 at distance 0,
            # whose square root is ~1e-3: equal up to that (the service answers the graph's).
            assert abs(first.confidence - confidence) < 2e-3
        else:
            assert not first.within
            assert abs(first.confidence - (1 - confidence)) < 2e-3
    assert 0 < named < len(queries)
