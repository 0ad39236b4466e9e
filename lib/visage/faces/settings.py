"""Face-pipeline settings (VISAGE_DETECTOR, VISAGE_MAX_IMAGE_PIXELS, ...): declared with
every other variable in visage.config (FaceSettings, Config.faces); importable from here."""
from __future__ import annotations

from visage.config import FaceSettings

__all__ = ["FaceSettings"]
