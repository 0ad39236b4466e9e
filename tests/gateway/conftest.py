"""Gateway fixtures: the four real services in-process on free ports (one
SQLite store), and the real Envoy started by `python -m visage_gateway` in
front of them."""
from __future__ import annotations

import pytest
from gateway_stack import Gateway, Mesh, start_gateway

from visage.config import Config
from visage.faces.pool import PipelinePool
from visage.store.sqlite import SqliteStore
from visage_classifier import server as classifier_server
from visage_ingest import server as ingest_server
from visage_query import server as query_server
from visage_trainer import server as trainer_server
from visage_trainer.training import TrainerSettings


@pytest.fixture(scope="module")
def mesh(tmp_path_factory) -> Mesh:
    config = Config(data_dir=tmp_path_factory.mktemp("gateway-data"), workers=1)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = SqliteStore(config.sqlite_path)
    store.migrate()
    pool = PipelinePool(config)
    query = query_server.start(config, store, "127.0.0.1:0")
    ingest = ingest_server.start(config, store, "127.0.0.1:0", pool=pool)
    trainer = trainer_server.start(config, store, "127.0.0.1:0",
                                   TrainerSettings(debounce_seconds=1.0, poll_seconds=0.1))
    classifier = classifier_server.start(config, store, "127.0.0.1:0", pool=pool)
    ports = {"query": query.port, "ingest": ingest[1], "trainer": trainer[1], "classifier": classifier.port}
    yield Mesh(config, store, ports)
    classifier.stop(grace=0)
    trainer[0].stop(0).wait()
    trainer[3].stop()
    ingest[0].stop(0).wait()
    ingest[3].close()
    query.stop(grace=0)
    pool.close()
    store.close()


@pytest.fixture(scope="module")
def gateway(mesh, tmp_path_factory) -> Gateway:
    gateway = start_gateway(mesh.ports, tmp_path_factory.mktemp("gateway"))
    yield gateway
    gateway.stop()
