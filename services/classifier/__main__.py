"""`python -m visage_classifier`: the ClassifyService on config.ports.classifier."""
from __future__ import annotations

from visage.server import run_service
from visage_classifier.server import start

if __name__ == "__main__":
    run_service("classifier", start)
