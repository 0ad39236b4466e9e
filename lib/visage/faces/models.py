"""Paths of the dlib model files shipped by the `face-recognition-models` wheel.

We locate the package with importlib instead of importing it: its __init__
imports `pkg_resources`, which current setuptools no longer ships. Finding the
spec does not execute the package, so the files are found either way."""
from __future__ import annotations

import importlib.util
from pathlib import Path

FIVE_POINT_PREDICTOR = "shape_predictor_5_face_landmarks.dat"
RESNET_ENCODER = "dlib_face_recognition_resnet_model_v1.dat"
CNN_DETECTOR = "mmod_human_face_detector.dat"


def model_path(filename: str) -> str:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the face-recognition-models package is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / filename
    if not path.is_file():
        raise RuntimeError(f"dlib model file missing: {path}")
    return str(path)
