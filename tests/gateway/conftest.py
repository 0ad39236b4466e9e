"""Gateway fixtures: the four real services in-process on free ports (one
SQLite store), and the real Envoy started by `python -m visage_gateway` in
front of them."""
from __future__ import annotations

import pytest
from gateway_stack import Gateway, Mesh, start_gateway

from visage.config import Config
from visage.mesh import start_in_process
from visage.store import open_store
from visage_trainer.training import TrainerSettings


@pytest.fixture(scope="module")
def mesh(tmp_path_factory) -> Mesh:
    config = Config(data_dir=tmp_path_factory.mktemp("gateway-data"), workers=1)
    config.data_dir.mkdir(parents=True, exist_ok=True)
    store = open_store(config)
    settings = TrainerSettings(debounce_seconds=1.0, poll_seconds=0.1)
    with start_in_process(config, store, trainer_settings=settings) as services:
        yield Mesh(config, store, services.ports)
    store.close()


@pytest.fixture(scope="module")
def gateway(mesh, tmp_path_factory) -> Gateway:
    gateway = start_gateway(mesh.ports, tmp_path_factory.mktemp("gateway"))
    yield gateway
    gateway.stop()
