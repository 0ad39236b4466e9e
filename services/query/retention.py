"""Event retention: events older than VISAGE_EVENT_RETENTION_DAYS are compacted
away (the log keeps no more history than consumers need). Runs in every query
service replica; compaction is idempotent, so replicas may overlap harmlessly."""
from __future__ import annotations

import logging
import threading
import time

from visage.store import Store

log = logging.getLogger(__name__)

COMPACT_EVERY_SECONDS = 3600.0


class EventCompactor:
    def __init__(self, store: Store, retention_days: float, every_seconds: float = COMPACT_EVERY_SECONDS):
        self.store, self.retention_seconds, self.every_seconds = store, retention_days * 86400, every_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="event-compactor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def compact_once(self) -> int:
        removed = self.store.compact_events(time.time() - self.retention_seconds)
        if removed:
            log.info("compacted %d events older than %.1f days", removed, self.retention_seconds / 86400)
        return removed

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.compact_once()
            except Exception:  # the store may be briefly unreachable: try again next round
                log.exception("event compaction failed")
            self._stop.wait(self.every_seconds)
