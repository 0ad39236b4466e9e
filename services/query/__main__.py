"""`python -m visage_query`: the query service on config.ports.query."""
from __future__ import annotations

from visage.server import run_service
from visage_query.server import start

if __name__ == "__main__":
    run_service("query", start)
