"""`python -m visage_trainer`: the trainer service on config.ports.trainer."""
from __future__ import annotations

from visage.server import run_service
from visage_trainer.server import start

if __name__ == "__main__":
    run_service("trainer", start)
