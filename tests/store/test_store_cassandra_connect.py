"""Opening a Cassandra store: the connect timeout is configurable (a loaded machine needs a
long one), and a node that is not ready yet is tried again instead of failing the start."""
from __future__ import annotations

import dataclasses

from forwarder import Forwarder
from visage.config import CassandraConfig
from visage.store.cassandra import CassandraStore


def test_connect_timeout_comes_from_the_environment(monkeypatch):
    assert CassandraConfig.from_env().connect_timeout_seconds == 10  # production's default
    monkeypatch.setenv("VISAGE_CASSANDRA_CONNECT_TIMEOUT_SECONDS", "45.5")
    assert CassandraConfig.from_env().connect_timeout_seconds == 45.5


def test_the_driver_uses_the_configured_connect_timeout(cassandra_config):
    store = CassandraStore(dataclasses.replace(cassandra_config, connect_timeout_seconds=77))
    try:
        assert store._cluster.connect_timeout == 77
        assert store._cluster.control_connection_timeout == 77  # the driver's setup queries
    finally:
        store.close()


def test_a_node_that_hangs_up_at_first_is_tried_again(cassandra_config):
    proxy = Forwarder(cassandra_config.port, refused=1)  # as a node still starting
    try:
        store = CassandraStore(dataclasses.replace(cassandra_config, port=proxy.port))
        try:
            persona = store.create_persona("Ada")
            assert store.get_persona(persona.persona_id).display_name == "Ada"
        finally:
            store.close()
        assert proxy.accepted > 1
    finally:
        proxy.close()
