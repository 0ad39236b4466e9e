"""Trainer test fixtures (helpers live in trainer_helpers.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from trainer_helpers import LabelledWorld, Photo, dlib_models, embed, store_photos


@pytest.fixture(scope="session")
def photos(faces_dir: Path) -> list[Photo]:
    models = dlib_models()
    found = []
    for group in ("bbt", "presidents"):
        for person_dir in sorted((faces_dir / group).iterdir()):
            for path in sorted(person_dir.iterdir()):
                found.append(Photo(group, person_dir.name, path, embed(path, models)))
    for path in sorted((faces_dir / "noise").iterdir()):
        found.append(Photo("noise", "", path, embed(path, models)))
    return found


@pytest.fixture
def world(sqlite_store, photos) -> LabelledWorld:
    face_ids = store_photos(sqlite_store, photos)
    personas = {name: sqlite_store.create_persona(name.title()).persona_id
                for name in sorted({p.person for p in photos if p.person})}
    return LabelledWorld(sqlite_store, photos, face_ids, personas)


@pytest.fixture(scope="session")
def edge_photos(faces_dir: Path) -> list[Photo]:
    """The three Obama faces of edge/ (a 32-bit PNG, a partial face, a tiny image)."""
    models = dlib_models()
    return [Photo("edge", "", path, embed(path, models)) for path in sorted((faces_dir / "edge").iterdir())]
