"""Event retention: the query service's compactor removes events older than
VISAGE_EVENT_RETENTION_DAYS and keeps newer ones (both stores)."""
from __future__ import annotations

from visage.config import Config
from visage_query.retention import EventCompactor


def test_compactor_keeps_recent_events_and_removes_expired_ones(store):
    store.create_persona("Bernadette")
    assert EventCompactor(store, retention_days=1).compact_once() == 0
    assert len(store.read_events("", 100)) == 1
    # A retention of minus two minutes puts every event so far past the limit.
    assert EventCompactor(store, retention_days=-2 / 1440).compact_once() == 1
    assert store.read_events("", 100) == []


def test_retention_is_configured_from_the_environment(monkeypatch):
    assert Config.from_env().event_retention_days == 30
    monkeypatch.setenv("VISAGE_EVENT_RETENTION_DAYS", "7.5")
    assert Config.from_env().event_retention_days == 7.5
