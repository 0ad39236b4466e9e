"""Versions switch while callers keep classifying: no request fails, and every
answer comes wholly from one version."""
from __future__ import annotations

import threading
import time

from tests.classifier.conftest import activate_model, personas_for
from visage.v1 import classify_pb2


def test_no_request_fails_while_versions_switch(stub, classifier, sqlite_store, crop_embeddings, faces_dir):
    ids = personas_for(sqlite_store, crop_embeddings)
    everyone = activate_model(sqlite_store, {ids[n]: rows for n, rows in crop_embeddings.items()})
    amy_only = activate_model(sqlite_store, {ids["amy"]: crop_embeddings["amy"]})
    expected_for_raj = {everyone: ids["raj"], amy_only: ""}
    probe = classify_pb2.ClassifyEmbeddingsRequest(
        embeddings=[classify_pb2.Embedding(values=crop_embeddings["raj"][0].tolist())] * 64)
    scene = classify_pb2.ClassifyRequest(content=(faces_dir / "scenes/bbt3.jpg").read_bytes())
    stop = threading.Event()
    failures: list[Exception] = []
    answers: list[tuple[int, set[str]]] = []

    def embeddings_caller():
        while not stop.is_set():
            try:
                response = stub.ClassifyEmbeddings(probe, timeout=10)
                answers.append((response.model_version, {p.persona_id for p in response.predictions}))
            except Exception as error:  # any failure is what this test is about
                failures.append(error)

    def image_caller():
        while not stop.is_set():
            try:
                response = stub.Classify(scene, timeout=30)
                raj = [face.persona_id for face in response.faces if face.box.left == 366]
                answers.append((response.model_version, set(raj)))
            except Exception as error:
                failures.append(error)

    wait_serving(classifier, amy_only)
    callers = [threading.Thread(target=embeddings_caller) for _ in range(3)] + [threading.Thread(target=image_caller)]
    for caller in callers:
        caller.start()
    served = []
    for version in [everyone, amy_only, everyone, amy_only, everyone]:
        sqlite_store.activate_model_version(version)
        wait_serving(classifier, version)
        served.append(version)
        time.sleep(0.3)
    stop.set()
    for caller in callers:
        caller.join(30)
    assert failures == []
    assert served == [everyone, amy_only, everyone, amy_only, everyone]
    assert {version for version, _ in answers} == {everyone, amy_only}
    for version, persona_ids in answers:
        assert persona_ids == {expected_for_raj[version]}, "an answer mixed two model versions"


def wait_serving(classifier, version: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while getattr(classifier.classifier.models.current(), "version", 0) != version:
        assert time.monotonic() < deadline, f"version {version} never swapped in"
        time.sleep(0.01)
