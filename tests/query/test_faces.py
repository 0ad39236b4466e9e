"""Labels, predictions, faces and images as the UI reads them."""
from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
from PIL import Image

from visage.store.base import RECLASSIFIED_VERSION_KEY
from visage.v1 import query_pb2
from visage.v1 import resources_pb2 as pb

from query_calls import create, label, rpc_error

LABELLED, PREDICTED, REJECTED = query_pb2.FACE_KIND_LABELLED, query_pb2.FACE_KIND_PREDICTED, query_pb2.FACE_KIND_REJECTED


def face_ids(stub, persona_id: str, kind: int) -> list[str]:
    response = stub.ListPersonaFaces(query_pb2.ListPersonaFacesRequest(persona_id=persona_id, kind=kind))
    return [face.face_id for face in response.faces]


def unknown_ids(stub) -> list[str]:
    return [face.face_id for face in stub.ListUnknownFaces(query_pb2.ListUnknownFacesRequest()).faces]


def test_label_face_returns_the_face_and_a_belongs_label_moves_it(stub, store, add_image, issue_token):
    penny, amy = create(stub, "Penny"), create(stub, "Amy")
    face = add_image(store, 1)[0]
    as_leonard = [("authorization", f"Bearer {issue_token('labeller', 'leonard')}")]
    # The label names the token's subject; what the request claims in labelled_by is ignored.
    labelled = stub.LabelFace(query_pb2.LabelFaceRequest(face_id=face.face_id, persona_id=penny.persona_id,
                                                         verdict=pb.VERDICT_BELONGS, labelled_by="penny"),
                              metadata=as_leonard)
    assert labelled.face_id == face.face_id and labelled.image_id == face.image_id
    assert [(lab.persona_id, lab.verdict, lab.labelled_by) for lab in labelled.labels] == [
        (penny.persona_id, pb.VERDICT_BELONGS, "leonard")]
    assert labelled.box.right == face.box[2] and len(labelled.landmarks) == 5
    assert list(labelled.embedding) == []
    [event] = [e for e in store.read_events("") if e.type == pb.EVENT_TYPE_FACE_LABELLED]
    assert event.attributes["actor"] == "leonard"

    moved = label(stub, face.face_id, amy.persona_id)  # a BELONGS label replaces the other persona's
    assert [(lab.persona_id, lab.labelled_by) for lab in moved.labels] == [(amy.persona_id, "test-admin")]
    assert face_ids(stub, penny.persona_id, LABELLED) == []
    assert face_ids(stub, amy.persona_id, LABELLED) == [face.face_id]

    unlabelled = stub.UnlabelFace(query_pb2.UnlabelFaceRequest(face_id=face.face_id, persona_id=amy.persona_id))
    assert list(unlabelled.labels) == []
    assert face_ids(stub, amy.persona_id, LABELLED) == []


def test_label_face_unknown_ids_are_not_found_and_write_nothing(stub, store, add_image):
    penny = create(stub, "Penny")
    face = add_image(store, 1)[0]
    error = rpc_error(stub.LabelFace, query_pb2.LabelFaceRequest(face_id="no-such-face", persona_id=penny.persona_id,
                                                                 verdict=pb.VERDICT_BELONGS))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "no-such-face" in error.details()
    error = rpc_error(stub.LabelFace, query_pb2.LabelFaceRequest(face_id=face.face_id, persona_id="no-such-persona",
                                                                 verdict=pb.VERDICT_NOT_BELONGS))
    assert error.code() == grpc.StatusCode.NOT_FOUND and "no-such-persona" in error.details()
    assert list(stub.GetFace(query_pb2.GetFaceRequest(face_id=face.face_id)).labels) == []


def test_get_face_with_embedding(stub, store, add_image):
    face = add_image(store, 1)[0]
    got = stub.GetFace(query_pb2.GetFaceRequest(face_id=face.face_id, include_embedding=True))
    np.testing.assert_allclose(np.array(got.embedding, dtype=np.float32), face.embedding)
    assert list(stub.GetFace(query_pb2.GetFaceRequest(face_id=face.face_id)).embedding) == []


def test_labels_win_over_predictions(stub, store, add_image, activate_model, predict):
    penny, amy = create(stub, "Penny"), create(stub, "Amy")
    faces = add_image(store, 3)
    version = activate_model(store, [penny.persona_id, amy.persona_id])
    predict(store, version, *[(face.face_id, amy.persona_id, 0.9) for face in faces])
    label(stub, faces[0].face_id, penny.persona_id)                      # labelled as someone else
    label(stub, faces[1].face_id, amy.persona_id, pb.VERDICT_NOT_BELONGS)  # rejected for Amy

    shown = stub.GetFace(query_pb2.GetFaceRequest(face_id=faces[0].face_id))
    assert not shown.HasField("prediction") and shown.labels[0].persona_id == penny.persona_id
    assert stub.GetFace(query_pb2.GetFaceRequest(face_id=faces[2].face_id)).prediction.persona_id == amy.persona_id
    assert face_ids(stub, amy.persona_id, PREDICTED) == [faces[2].face_id]
    assert face_ids(stub, amy.persona_id, REJECTED) == [faces[1].face_id]
    amy_now = stub.GetPersona(query_pb2.GetPersonaRequest(persona_id=amy.persona_id))
    assert amy_now.predicted_face_count == 1 and amy_now.labelled_face_count == 0
    # A face rejected for the persona it is predicted as is, for the UI, still nobody known.
    assert unknown_ids(stub) == [faces[1].face_id]


def test_predicted_faces_by_confidence_and_the_last_verdict_stands(stub, store, add_image, activate_model, predict):
    penny = create(stub, "Penny")
    faces = add_image(store, 5)
    old = activate_model(store, [penny.persona_id])
    predict(store, old, (faces[4].face_id, penny.persona_id, 0.99))  # the new version leaves it as it was
    new = activate_model(store, [penny.persona_id])
    predict(store, new, (faces[0].face_id, penny.persona_id, 0.6), (faces[1].face_id, penny.persona_id, 0.95),
            (faces[2].face_id, penny.persona_id, 0.8), (faces[3].face_id, "", 0.7))

    listed = stub.ListPersonaFaces(query_pb2.ListPersonaFacesRequest(persona_id=penny.persona_id, kind=PREDICTED))
    assert [face.face_id for face in listed.faces] == [faces[4].face_id, faces[1].face_id, faces[2].face_id,
                                                       faces[0].face_id]
    # Until the new version's full run has covered the store, a verdict names the version that wrote it...
    assert [face.prediction.model_version for face in listed.faces] == [old, new, new, new]
    assert listed.faces[1].prediction.confidence == pytest.approx(0.95)
    # ...after it, every verdict is the new version's (the ones it left unchanged too).
    store.set_meta(RECLASSIFIED_VERSION_KEY, str(new))
    standing = stub.GetFace(query_pb2.GetFaceRequest(face_id=faces[4].face_id))
    assert (standing.prediction.persona_id, standing.prediction.model_version) == (penny.persona_id, new)
    assert standing.prediction.confidence == pytest.approx(0.99)
    # Unknown: predicted unknown, or no verdict at all; newest first.
    assert unknown_ids(stub) == [faces[3].face_id]


def test_unknown_faces_newest_image_first(stub, store, add_image):
    older = add_image(store, 2, create_time=1_000.0)
    newer = add_image(store, 1, create_time=2_000.0)
    add_image(store, 0, create_time=3_000.0)  # an image without faces adds nothing
    penny = create(stub, "Penny")
    label(stub, older[1].face_id, penny.persona_id)
    assert unknown_ids(stub) == [newer[0].face_id, older[0].face_id]


def test_no_model_means_no_predictions(stub, store, add_image):
    penny = create(stub, "Penny")
    faces = add_image(store, 2)
    assert face_ids(stub, penny.persona_id, PREDICTED) == []
    assert sorted(unknown_ids(stub)) == sorted(face.face_id for face in faces)


def test_labelled_faces_newest_label_first(stub, store, add_image):
    penny = create(stub, "Penny")
    faces = add_image(store, 3)
    for face in (faces[1], faces[0], faces[2]):
        label(stub, face.face_id, penny.persona_id)
    assert face_ids(stub, penny.persona_id, LABELLED) == [faces[2].face_id, faces[0].face_id, faces[1].face_id]
    assert face_ids(stub, penny.persona_id, query_pb2.FACE_KIND_UNSPECIFIED) == face_ids(stub, penny.persona_id,
                                                                                           LABELLED)


def test_face_crop_and_image_content_bytes(stub, store, add_image):
    face = add_image(store, 2)[1]
    crop = stub.GetFaceCrop(query_pb2.GetFaceCropRequest(face_id=face.face_id))
    assert crop.content_type == "image/jpeg" and crop.data == face.crop_jpeg
    assert Image.open(io.BytesIO(crop.data)).format == "JPEG"
    content = stub.GetImageContent(query_pb2.GetImageContentRequest(image_id=face.image_id))
    assert content.content_type == "image/jpeg"
    assert content.data == store.get_image_content(face.image_id)
    assert Image.open(io.BytesIO(content.data)).format == "JPEG"


def test_get_image_with_faces_labels_and_predictions(stub, store, add_image, activate_model, predict):
    penny = create(stub, "Penny")
    faces = add_image(store, 3)
    version = activate_model(store, [penny.persona_id])
    predict(store, version, (faces[1].face_id, penny.persona_id, 0.8), (faces[2].face_id, "", 0.3))
    label(stub, faces[0].face_id, penny.persona_id)
    response = stub.GetImage(query_pb2.GetImageRequest(image_id=faces[0].image_id))
    assert response.image.image_id == faces[0].image_id and response.image.face_count == 3
    assert response.image.content_type == "image/jpeg"
    assert [face.face_id for face in response.faces] == [face.face_id for face in faces]
    assert response.faces[0].labels[0].persona_id == penny.persona_id
    assert response.faces[1].prediction.persona_id == penny.persona_id
    assert response.faces[2].prediction.persona_id == "" and response.faces[2].prediction.model_version == version


def test_list_images_newest_first(stub, store, add_image):
    first = add_image(store, 1, create_time=10.0)[0]
    add_image(store, 0, create_time=20.0)
    images = stub.ListImages(query_pb2.ListImagesRequest()).images
    assert len(images) == 2 and images[1].image_id == first.image_id
    assert images[0].status == pb.IMAGE_STATUS_NO_FACE and images[1].status == pb.IMAGE_STATUS_FACES_FOUND
