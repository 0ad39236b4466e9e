"""The store: one interface (base.Store), two backends (SQLite, Cassandra)."""
from __future__ import annotations

from visage.config import Config
from visage.store.base import NotFound, Store, StoreError

__all__ = ["NotFound", "Store", "StoreError", "open_store"]


def open_store(config: Config) -> Store:
    """Opens (and migrates) the configured backend."""
    if config.store == "sqlite":
        from visage.store.sqlite import SqliteStore
        store: Store = SqliteStore(config.sqlite_path)
    elif config.store == "cassandra":
        from visage.store.cassandra import CassandraStore
        store = CassandraStore(config.cassandra)
    else:
        raise ValueError(f"unknown store backend {config.store!r} (expected 'sqlite' or 'cassandra')")
    store.migrate()
    return store
