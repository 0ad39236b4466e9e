"""Opening a Cassandra store: the connect timeout is configurable (a loaded machine needs a
long one), and a node that is not ready yet is tried again instead of failing the start."""
from __future__ import annotations

import dataclasses
import socket
import threading

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


class HangUpFirst:
    """A TCP forwarder to the real node that hangs up on its first `refused` connections,
    as a node that is still starting does, and forwards every later one."""

    def __init__(self, target_port: int, refused: int):
        self.target_port, self.refused, self.accepted = target_port, refused, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            self.accepted += 1
            if self.accepted <= self.refused:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            end.close()

    def close(self) -> None:
        self.listener.close()


def test_a_node_that_hangs_up_at_first_is_tried_again(cassandra_config):
    proxy = HangUpFirst(cassandra_config.port, refused=1)
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
