"""HogDetector's full-size look (the second pass on a large photo) finds every face the
colour HOG finds - the faces face_recognition finds - on the shared photos."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.faces.test_pipeline import iou
from visage.faces.detectors import HogDetector

PHOTOS = ["scenes/bbt1.jpg", "scenes/bbt2.jpg", "scenes/bbt3.jpg", "scenes/two_people.jpg", "noise/happy.jpg",
          "noise/sad.jpg", "presidents/obama/obama-480p.jpg", "edge/obama_small.jpg"]


@pytest.mark.parametrize("name", PHOTOS)
def test_the_full_size_look_finds_every_face_the_colour_detection_finds(faces_dir, name):
    detector = HogDetector(upsample=1)
    rgb = np.asarray(Image.open(faces_dir / name).convert("RGB"))
    colour = detector.detect(rgb)
    full_size = detector.detect_full_size(rgb)
    assert colour
    for box in colour:
        assert max((iou(box, other) for other in full_size), default=0) > 0.5, f"{name}: {box} not found"
