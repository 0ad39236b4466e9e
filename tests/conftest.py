"""Fixtures shared by every test area. Area-specific fixtures live in the
area's own conftest.py (tests/<area>/conftest.py)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from visage.config import Config
from visage.store.sqlite import SqliteStore

REPO = Path(__file__).resolve().parent.parent


def find_faces_dir() -> Path:
    """The shared real face photos (see their README): $VISAGE_FACES_DIR, else
    ../shared/data/faces next to the checkout, else /work/shared/data/faces."""
    candidates = [os.environ.get("VISAGE_FACES_DIR", ""), REPO.parent / "shared/data/faces",
                  "/work/shared/data/faces"]
    for candidate in filter(None, candidates):
        if (Path(candidate) / "bbt").is_dir():
            return Path(candidate)
    raise RuntimeError(f"shared face photos not found in any of {candidates}; set VISAGE_FACES_DIR")


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    return find_faces_dir()


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """Embedded defaults with a private data directory."""
    return Config(data_dir=tmp_path / "data")


@pytest.fixture
def sqlite_store(config: Config):
    store = SqliteStore(config.sqlite_path)
    store.migrate()
    yield store
    store.close()


@pytest.fixture(scope="session")
def test_output_dir() -> Path:
    """Where tests write artefacts worth looking at (screenshots, reports)."""
    path = REPO / "test-output"
    path.mkdir(exist_ok=True)
    return path
