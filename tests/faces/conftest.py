"""Fixtures for the face pipeline tests: one in-process pipeline per session
(loading the dlib models takes about a second) and image helpers."""
from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from visage.config import Config
from visage.faces.pipeline import FacePipeline
from visage.faces.settings import FaceSettings


@pytest.fixture(scope="session")
def pipeline() -> FacePipeline:
    return FacePipeline(Config(), FaceSettings())


def read(path: Path) -> bytes:
    return path.read_bytes()


def encode(image: Image.Image, fmt: str = "JPEG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()
