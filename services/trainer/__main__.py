"""`python -m visage_trainer`: the trainer service on config.ports.trainer."""
from __future__ import annotations

from visage.config import Config
from visage.server import serve_until_signalled, setup_logging
from visage.store import open_store
from visage_trainer.server import start


def main() -> None:
    setup_logging("trainer")
    config = Config.from_env()
    store = open_store(config)
    server, _port, health, trainer = start(config, store, f"{config.host}:{config.ports.trainer}")
    serve_until_signalled(server, health, on_stop=lambda: (trainer.stop(), store.close()))


if __name__ == "__main__":
    main()
