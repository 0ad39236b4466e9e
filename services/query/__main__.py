"""`python -m visage_query`: the query service on config.ports.query."""
from __future__ import annotations

from visage.config import Config
from visage.server import serve_until_signalled, setup_logging
from visage.store import open_store
from visage_query.server import QueryServicer, start


class _EndWatchesOnDrain:
    """The health servicer as serve_until_signalled sees it: when draining
    starts it also ends open WatchEvents streams, which would otherwise hold
    the shutdown for the whole grace period."""

    def __init__(self, health_servicer, servicer: QueryServicer):
        self._health = health_servicer
        self._servicer = servicer

    def enter_graceful_shutdown(self) -> None:
        self._servicer.close()
        self._health.enter_graceful_shutdown()


def main() -> None:
    setup_logging("query")
    config = Config.from_env()
    store = open_store(config)
    service = start(config, store, f"{config.host}:{config.ports.query}")
    serve_until_signalled(service.server, _EndWatchesOnDrain(service.health, service.servicer), on_stop=store.close)


if __name__ == "__main__":
    main()
