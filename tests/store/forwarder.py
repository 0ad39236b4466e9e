"""A TCP forwarder in front of the real Cassandra node, to act out what a node does on a bad
day without a stand-in for it: hang up on the first connections (still starting), or stop
reading what clients send for a while (too loaded to keep up)."""
from __future__ import annotations

import socket
import threading


class Forwarder:
    """Forwards 127.0.0.1:`port` to the node's port. Hangs up on its first `refused`
    connections; while `flowing` is clear, reads nothing from its clients."""

    def __init__(self, target_port: int, refused: int = 0):
        self.target_port, self.refused, self.accepted = target_port, refused, 0
        self.flowing = threading.Event()
        self.flowing.set()
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
            threading.Thread(target=self._pipe, args=(client, upstream, self.flowing), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, None), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket, flowing: threading.Event | None) -> None:
        try:
            while (flowing is None or flowing.wait()) and (data := source.recv(65536)):
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            end.close()

    def close(self) -> None:
        self.flowing.set()
        self.listener.close()
