"""Auth fixtures: every real service in-process on one SQLite store."""
from __future__ import annotations

import pytest

from visage.config import Config
from visage.mesh import start_in_process
from visage.store import open_store


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    config = Config(data_dir=tmp_path_factory.mktemp("auth-data"), workers=1)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(config)
    with start_in_process(config, store) as mesh:
        yield mesh
    store.close()
