"""The servicer called directly (no channel), with a minimal ServicerContext."""
from __future__ import annotations

import grpc
import pytest

from tests.classifier.conftest import SCENE_PEOPLE, activate_model, personas_for
from visage.v1 import classify_pb2
from visage_classifier.models import ActiveModel
from visage_classifier.reclassify import Reclassifier
from visage_classifier.server import Classifier, ClassifyServicer


class Aborted(Exception):
    pass


class Context:
    """Just what the servicer uses of grpc.ServicerContext."""

    def __init__(self):
        self.active = True
        self.code = None
        self.details = ""

    def is_active(self):
        return self.active

    def time_remaining(self):
        return None

    def send_initial_metadata(self, metadata):
        self.initial_metadata = metadata

    def abort(self, code, details):
        self.code, self.details = code, details
        raise Aborted(details)


@pytest.fixture
def servicer(sqlite_store, pool):
    models = ActiveModel(sqlite_store)
    reclassifier = Reclassifier(sqlite_store, models)
    service = ClassifyServicer(Classifier(sqlite_store, pool, models, reclassifier), 4)
    yield service
    # A run's thread may still be appending its last event after its final
    # state is out: it must end before the store closes (else a segfault).
    reclassifier.stop()
    service.close()


@pytest.fixture
def model_ids(sqlite_store, crop_embeddings, servicer):
    ids = personas_for(sqlite_store, crop_embeddings)
    activate_model(sqlite_store, {ids[n]: rows for n, rows in crop_embeddings.items()})
    servicer._classifier.models.refresh()
    return ids


def test_classify(servicer, model_ids, faces_dir):
    response = servicer.Classify(classify_pb2.ClassifyRequest(content=(faces_dir / "scenes/bbt3.jpg").read_bytes()),
                                 Context())
    names = [f.display_name for f in sorted(response.faces, key=lambda f: f.box.left)]
    assert names == SCENE_PEOPLE["bbt3.jpg"] and response.model_version == 1


def test_classify_bad_image_aborts_with_invalid_argument(servicer):
    context = Context()
    with pytest.raises(Aborted):
        servicer.Classify(classify_pb2.ClassifyRequest(content=b"GIF89a broken"), context)
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT and context.details


def test_classify_embeddings(servicer, model_ids, crop_embeddings):
    request = classify_pb2.ClassifyEmbeddingsRequest(
        embeddings=[classify_pb2.Embedding(values=crop_embeddings["stuart"][3].tolist())])
    assert servicer.ClassifyEmbeddings(request, Context()).predictions[0].persona_id == model_ids["stuart"]
    context = Context()
    with pytest.raises(Aborted):
        servicer.ClassifyEmbeddings(classify_pb2.ClassifyEmbeddingsRequest(
            embeddings=[classify_pb2.Embedding(values=[1.0] * 3)]), context)
    assert context.code == grpc.StatusCode.INVALID_ARGUMENT


def test_classify_stream(servicer, model_ids, crop_embeddings):
    items = [classify_pb2.ClassifyStreamRequest(request_id=str(i), embedding=classify_pb2.Embedding(
        values=crop_embeddings[name][0].tolist())) for i, name in enumerate(sorted(crop_embeddings))]
    answers = {a.request_id: a for a in servicer.ClassifyStream(iter(items), Context())}
    assert {rid: a.faces[0].display_name for rid, a in answers.items()} == {
        str(i): name for i, name in enumerate(sorted(crop_embeddings))}


def test_reclassify_without_faces_succeeds_with_nothing_done(servicer, model_ids):
    progress = list(servicer.Reclassify(classify_pb2.ReclassifyRequest(), Context()))
    assert progress[-1].state == classify_pb2.RECLASSIFY_STATE_SUCCEEDED
    assert (progress[-1].done, progress[-1].total, progress[-1].model_version) == (0, 0, 1)
