"""How a test names a store so another process can open the same one: a small
JSON-able spec ({"backend": "sqlite", "path": ...} or {"backend": "cassandra", ...})."""
from __future__ import annotations

import dataclasses

from visage.config import CassandraConfig
from visage.store.base import Store


def spec_of(backend: str, sqlite_path=None, cassandra: CassandraConfig | None = None) -> dict:
    if backend == "sqlite":
        return {"backend": "sqlite", "path": str(sqlite_path)}
    config = dataclasses.asdict(cassandra)
    config["contact_points"] = list(config["contact_points"])
    return {"backend": "cassandra", "config": config}


def open_spec(spec: dict) -> Store:
    if spec["backend"] == "sqlite":
        from visage.store.sqlite import SqliteStore
        store: Store = SqliteStore(spec["path"])
    else:
        from visage.store.cassandra import CassandraStore
        config = dict(spec["config"], contact_points=tuple(spec["config"]["contact_points"]))
        store = CassandraStore(CassandraConfig(**config))
    store.migrate()
    return store
