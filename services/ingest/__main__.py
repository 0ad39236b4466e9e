"""`python -m visage_ingest`: the ingest service on config.ports.ingest."""
from __future__ import annotations

import logging

from visage.config import Config
from visage.server import serve_until_signalled, setup_logging
from visage.store import open_store
from visage_ingest.server import start

log = logging.getLogger("visage_ingest")


def main() -> None:
    setup_logging("ingest")
    config = Config.from_env()
    store = open_store(config)
    server, _port, health, servicer = start(config, store, f"{config.host}:{config.ports.ingest}")

    def stop_rest() -> None:
        # The server has drained (in-flight calls finished or timed out): let
        # commits in progress end, stop the workers, then close the store.
        servicer.close()
        servicer.pool.close()
        store.close()
        log.info("ingest stopped")

    serve_until_signalled(server, health, on_stop=stop_rest)


if __name__ == "__main__":  # guard required: pool workers are spawned and re-import __main__
    main()
