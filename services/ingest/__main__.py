"""`python -m visage_ingest`: the ingest service on config.ports.ingest."""
from __future__ import annotations

from visage.server import run_service
from visage_ingest.server import start

if __name__ == "__main__":  # guard required: pool workers are spawned and re-import __main__
    run_service("ingest", start)
