"""The classifier's view of "the active model": one Predictor reference that
is replaced atomically when a new version becomes active.

Why a plain attribute: reading and rebinding a Python reference is atomic, so
a request takes the current Predictor once at its start and finishes on it
even if a newer version is swapped in meanwhile; nobody waits on a lock to
classify. Loading (seconds for a big ONNX file) happens off to the side under
a lock that only serialises loaders; a failed load keeps the old model."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np

from visage.model import Predictor
from visage.store.base import Store

log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The active version's artifact is missing or does not load."""


@dataclass(frozen=True)
class Answers:
    """Per-row predictions of one model version (version 0 = no model)."""
    version: int
    persona_ids: list[str]  # "" = unknown
    confidences: np.ndarray  # float32


def predict(predictor: Predictor | None, embeddings: np.ndarray) -> Answers:
    """Every row unknown with confidence 0 when there is no model yet."""
    if predictor is None:
        return Answers(0, [""] * len(embeddings), np.zeros(len(embeddings), dtype=np.float32))
    if len(embeddings) == 0:
        return Answers(predictor.version, [], np.zeros(0, dtype=np.float32))
    persona_ids, confidences = predictor.predict(np.ascontiguousarray(embeddings, dtype=np.float32))
    return Answers(predictor.version, list(persona_ids), np.asarray(confidences, dtype=np.float32))


class ActiveModel:
    """Holds the Predictor of the store's active version."""

    def __init__(self, store: Store):
        self._store = store
        self._current: Predictor | None = None
        self._load_lock = threading.Lock()
        self.last_error = ""

    def current(self) -> Predictor | None:
        return self._current

    def refresh(self) -> Predictor | None:
        """Loads the store's active version if it is not the one held.
        Raises ModelLoadError (keeping the old model) when it cannot be loaded."""
        with self._load_lock:
            record = self._store.active_model_version()
            held = self._current
            if record is None:  # none active, or the active one was withdrawn by an erasure: serve none
                self._current = None
                return None
            if held is not None and held.version == record.version:
                return held
            artifact = self._store.get_model_artifact(record.version)
            try:
                if artifact is None:
                    raise ValueError("artifact not stored")
                loaded = Predictor.load(record, artifact)
            except Exception as error:  # any loader failure must leave the old model serving
                self.last_error = f"model version {record.version} could not be loaded: {error}"
                log.error("%s; still serving version %s", self.last_error, held.version if held else "none")
                raise ModelLoadError(self.last_error) from error
            self._current = loaded
            self.last_error = ""
            log.info("now serving model version %d", loaded.version)
            return loaded
