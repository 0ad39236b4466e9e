"""Face-pipeline settings from VISAGE_* environment variables. They live here,
not in visage.config, because only the face pipeline reads them."""
from __future__ import annotations

import os
from dataclasses import dataclass


def _env(name: str, default: str) -> str:
    return os.environ.get(f"VISAGE_{name}", default)


@dataclass(frozen=True)
class FaceSettings:
    # "hog" (dlib frontal HOG, fast on CPU) or "cnn" (dlib MMOD CNN: finds more
    # rotated/small faces, ~10-50x slower on CPU). Azure is chosen by endpoint+key.
    detector: str = "hog"
    # Times the image is upsampled before HOG/CNN detection; 1 finds faces down to ~40 px.
    upsample: int = 1
    # Faces whose box is smaller than this (shorter side, original pixels) are ignored.
    min_face_size: int = 20
    # Longest side the detector sees; larger images are downscaled for detection
    # only (boxes are mapped back). A JPEG is decoded no larger than needed for
    # this (DCT scaling); landmarks and embeddings use at least CHIP_SIZE px per face.
    # 0 = never downscale. Measurements behind 1600: FacePipeline._detect.
    detect_max_side: int = 1600
    # Decoded images above this many pixels are refused (decompression bombs).
    max_pixels: int = 40_000_000
    azure_endpoint: str = ""
    azure_key: str = ""

    @property
    def uses_azure(self) -> bool:
        return bool(self.azure_endpoint and self.azure_key)

    @classmethod
    def from_env(cls) -> "FaceSettings":
        return cls(
            detector=_env("DETECTOR", "hog").lower(),
            upsample=int(_env("DETECTOR_UPSAMPLE", "1")),
            min_face_size=int(_env("MIN_FACE_SIZE", "20")),
            detect_max_side=int(_env("DETECT_MAX_SIDE", "1600")),
            max_pixels=int(_env("MAX_IMAGE_PIXELS", "40000000")),
            azure_endpoint=_env("AZURE_FACE_ENDPOINT", ""),
            azure_key=_env("AZURE_FACE_KEY", ""),
        )
