"""dlib's face-recognition ResNet run by ONNX Runtime (visage.faces.encoder) gives
dlib's own embeddings: the pipeline's embeddings stay comparable with every
embedding dlib computed before, and with face_recognition's."""
from __future__ import annotations

import dlib
import numpy as np
import pytest
from PIL import Image

from visage.faces.encoder import ModelFormatError, OnnxFaceEncoder, build_onnx
from visage.faces.models import FIVE_POINT_PREDICTOR, RESNET_ENCODER, model_path


@pytest.fixture(scope="module")
def chips(faces_dir) -> list[np.ndarray]:
    """Aligned chips (dlib.get_face_chip) of every face in the group photos and a few portraits."""
    detector, landmarks = dlib.get_frontal_face_detector(), dlib.shape_predictor(model_path(FIVE_POINT_PREDICTOR))
    found = []
    for name in ("scenes/bbt1.jpg", "scenes/bbt3.jpg", "scenes/two_people.jpg", "noise/happy.jpg", "bbt/amy/amy1.png"):
        rgb = np.asarray(Image.open(faces_dir / name).convert("RGB"))
        found += [dlib.get_face_chip(rgb, landmarks(rgb, box), size=150, padding=0.25) for box in detector(rgb, 1)]
    assert len(found) >= 12
    return found


def test_embeddings_match_dlibs_to_float_rounding(chips):
    dlib_encoder = dlib.face_recognition_model_v1(model_path(RESNET_ENCODER))
    expected = np.array([dlib_encoder.compute_face_descriptor(chip) for chip in chips], dtype=np.float32)
    got = OnnxFaceEncoder(model_path(RESNET_ENCODER)).describe(chips)
    assert got.shape == (len(chips), 128)
    # dlib's same-person limit is 0.6; the two differ only in summation order.
    assert np.linalg.norm(got - expected, axis=1).max() < 1e-4


def test_a_batch_gives_each_chip_its_own_embedding(chips):
    encoder = OnnxFaceEncoder(model_path(RESNET_ENCODER))
    one_by_one = np.array([encoder.describe([chip])[0] for chip in chips[:4]])
    assert np.linalg.norm(encoder.describe(chips[:4]) - one_by_one, axis=1).max() < 1e-5
    assert encoder.describe([]).shape == (0, 128)


def test_a_file_that_is_not_dlibs_resnet_is_refused():
    with open(model_path(FIVE_POINT_PREDICTOR), "rb") as handle:
        with pytest.raises(ModelFormatError):
            build_onnx(handle.read())
