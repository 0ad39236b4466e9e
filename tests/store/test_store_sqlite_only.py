"""SQLite's own schema: predictions move intact from schema 1 (rowid table, index with
confidence) to schema 2 (keyed by face id, index by persona and version)."""
from __future__ import annotations

import sqlite3

import numpy as np

from visage.store.records import PredictionRecord
from visage.store.sqlite import MIGRATIONS, SqliteStore


def schema_one_store(path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE schema_version (version INTEGER NOT NULL);" + MIGRATIONS[0] +
                       "; INSERT INTO schema_version VALUES (1);")
    conn.executemany("INSERT INTO predictions VALUES (?, ?, ?, ?, ?)",
                     [(f"face{i:03d}", ["a", "b", ""][i % 3], i / 100, 1 + i % 2, 10.0 + i) for i in range(100)])
    conn.commit()
    conn.close()


def test_migration_keeps_schema_one_predictions(tmp_path):
    path = tmp_path / "visage.db"
    schema_one_store(path)
    store = SqliteStore(path)
    store.migrate()
    try:
        expected = [PredictionRecord(f"face{i:03d}", ["a", "b", ""][i % 3], i / 100, 1 + i % 2, 10.0 + i)
                    for i in range(100)]
        assert list(store.iter_predictions()) == expected
        assert store.predictions_of_persona("a", 1) == sorted(
            (p for p in expected if p.persona_id == "a" and p.model_version == 1), key=lambda p: -p.confidence)
        assert store.count_predictions(["a", "b", ""], 2) == {
            persona: sum(1 for p in expected if p.persona_id == persona and p.model_version == 2)
            for persona in ["a", "b", ""]}
        store.put_prediction_columns(["face000", "new"], ["b", "a"], np.array([0.5, 0.25], np.float32), 3, 20.0)
        assert store.get_prediction("face000") == PredictionRecord("face000", "b", 0.5, 3, 20.0)
        assert sum(1 for _ in store.iter_predictions()) == 101
        conn = sqlite3.connect(path)
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_version ORDER BY version")]
        index = [row[2] for row in conn.execute("PRAGMA index_info(predictions_by_persona)")]
        conn.close()
        assert versions == list(range(1, len(MIGRATIONS) + 1))
        assert index == ["persona_id", "model_version"]
        store.migrate()  # idempotent at the new version
        assert sum(1 for _ in store.iter_predictions()) == 101
    finally:
        store.close()
