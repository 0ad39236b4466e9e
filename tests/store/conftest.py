"""The store conformance suite runs unchanged against every backend: the `store`
fixture is parametrized over SQLite and Cassandra (skipped, or failed under
VISAGE_TESTS_REQUIRE_ALL=1, when no Cassandra runs; see tests/conftest.py)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from store_spec import open_spec, spec_of  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "cassandra_cluster: starts a real 3-node Cassandra cluster "
                            "(tests/store/test_three_nodes.py; scripts/cassandra.py start --cluster 3)")


@pytest.fixture(params=["sqlite", "cassandra"])
def store_spec(request, tmp_path) -> dict:
    """A spec any process can open (open_spec) naming one empty, migrated store."""
    if request.param == "sqlite":
        return spec_of("sqlite", sqlite_path=tmp_path / "visage.db")
    return spec_of("cassandra", cassandra=request.getfixturevalue("cassandra_config"))


@pytest.fixture
def store(store_spec):
    store = open_spec(store_spec)
    yield store
    store.close()
