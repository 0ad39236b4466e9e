"""A TCP forwarder in front of the real Cassandra node, to act out a node that is still
starting (it hangs up on the first connections) without a stand-in for the node."""
from __future__ import annotations

import socket
import threading


class Forwarder:
    """Forwards 127.0.0.1:`port` to the node's port; hangs up on its first `refused` connections."""

    def __init__(self, target_port: int, refused: int = 0):
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
