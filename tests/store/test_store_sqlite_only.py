"""SQLite's own schema: predictions move intact from schema 1 (rowid table, index with
confidence) to schema 2 (keyed by face id, index by persona and version), and at schema 6
those of the active version stay (the last verdict stands, indexed by persona alone)."""
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
    conn.execute("INSERT INTO meta VALUES ('active_model_version', '2')")
    conn.commit()
    conn.close()


def test_migration_keeps_schema_one_predictions(tmp_path):
    path = tmp_path / "visage.db"
    schema_one_store(path)
    store = SqliteStore(path)
    store.migrate()
    try:
        expected = [PredictionRecord(f"face{i:03d}", ["a", "b", ""][i % 3], i / 100, 1 + i % 2, 10.0 + i)
                    for i in range(100) if 1 + i % 2 == 2]  # version 1's had no say: gone at schema 6
        assert list(store.iter_predictions()) == expected
        assert store.predictions_of_persona("a") == sorted(
            (p for p in expected if p.persona_id == "a"), key=lambda p: -p.confidence)
        assert store.count_predictions(["a", "b", ""]) == {
            "a": sum(1 for p in expected if p.persona_id == "a"), "b": sum(1 for p in expected if p.persona_id == "b"),
            "": 0}
        store.put_prediction_columns(["face000", "new"], ["b", "a"], np.array([0.5, 0.25], np.float32), 3, 20.0)
        assert store.get_prediction("face000") == PredictionRecord("face000", "b", 0.5, 3, 20.0)
        assert sum(1 for _ in store.iter_predictions()) == 52
        conn = sqlite3.connect(path)
        versions = [row[0] for row in conn.execute("SELECT version FROM schema_version ORDER BY version")]
        index = [row[2] for row in conn.execute("PRAGMA index_info(predictions_by_persona)")]
        conn.close()
        assert versions == list(range(1, len(MIGRATIONS) + 1))
        assert index == ["persona_id"]
        store.migrate()  # idempotent at the new version
        assert sum(1 for _ in store.iter_predictions()) == 52
    finally:
        store.close()


def test_migration_six_fills_the_unknown_faces_index(tmp_path):
    """A store written at schema 5 gets its unknown faces indexed, by the same rule the
    writes keep (verdicts of versions not active had no say: they go)."""
    path = tmp_path / "visage.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    for version, script in enumerate(MIGRATIONS[:5], start=1):
        conn.executescript(script)
        conn.execute("INSERT INTO schema_version VALUES (?)", (version,))
    conn.executemany("INSERT INTO images VALUES (?, 'x.jpg', 'image/jpeg', 1, 1, 1, 3, 1, ?)",
                     [("old", 1.0), ("new", 2.0)])
    conn.executemany("INSERT INTO faces VALUES (?, ?, ?, '[0,0,1,1]', '[]', x'', x'', 0)",
                     [(f"{image}-{i}", image, i) for image in ("old", "new") for i in range(3)])
    conn.executemany("INSERT INTO predictions VALUES (?, ?, 0.9, ?, 0)",
                     [("new-0", "p", 2), ("new-1", "", 2), ("new-2", "p", 1), ("old-0", "p", 2), ("old-1", "p", 2)])
    conn.executemany("INSERT INTO labels VALUES (?, 'p', ?, 'someone', 0)", [("old-0", 2), ("old-2", 1)])
    conn.execute("INSERT INTO meta VALUES ('active_model_version', '2')")
    conn.commit()
    conn.close()
    store = SqliteStore(path)
    store.migrate()
    try:
        # new-0: named; new-1: unknown; new-2: v1's verdict had no say; old-0: rejected; old-1: named; old-2: labelled
        assert [key.face_id for key in store.list_unknown_faces(None, 10)] == ["new-1", "new-2", "old-0"]
    finally:
        store.close()
