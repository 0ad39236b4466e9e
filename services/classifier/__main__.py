"""`python -m visage_classifier`: the ClassifyService on config.ports.classifier."""
from __future__ import annotations

from visage.config import Config
from visage.server import serve_until_signalled, setup_logging
from visage.store import open_store
from visage_classifier.server import start


def main() -> None:
    setup_logging("classifier")
    config = Config.from_env()
    store = open_store(config)
    running = start(config, store, f"{config.host}:{config.ports.classifier}")

    def release() -> None:
        running.release()
        store.close()

    serve_until_signalled(running.server, running.health, on_stop=release)


if __name__ == "__main__":
    main()
