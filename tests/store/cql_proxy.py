"""A CQL protocol v4 proxy in front of the real Cassandra node that plays the answers a
busy or multi-node cluster gives, which one idle node never does: Cosmos DB's 429
(Overloaded with RetryAfterMs) and a conditional write whose outcome the client cannot
know (WriteTimeout at the CAS stage: the proposal may or may not have been applied).
Everything else goes to the node and back untouched."""
from __future__ import annotations

import socket
import struct
import threading

EXECUTE, ERROR = 0x0A, 0x00
OVERLOADED, WRITE_TIMEOUT = 0x1001, 0x1100
LOCAL_SERIAL = 0x0009
HEADER = struct.Struct(">BBhBI")  # version, flags, stream, opcode, body length


def _string(text: bytes) -> bytes:
    return struct.pack(">H", len(text)) + text


def overloaded_body() -> bytes:
    return struct.pack(">i", OVERLOADED) + _string(
        b"Request rate is large: ActivityID=0, RetryAfterMs=20, Additional details=''")


def cas_write_timeout_body() -> bytes:
    return (struct.pack(">i", WRITE_TIMEOUT) + _string(b"Operation timed out - received only 1 responses.")
            + struct.pack(">Hii", LOCAL_SERIAL, 1, 2) + _string(b"CAS"))


class CqlProxy:
    """Forwards 127.0.0.1:`port` to the node. `refuse` answers the next that-many EXECUTE
    requests itself with Overloaded; `unknown_outcome(marker, applied)` makes the next
    EXECUTE whose bound values contain `marker` end in a CAS WriteTimeout, after the node
    applied it (`applied`: forwarded, its answer swallowed) or without sending it."""

    def __init__(self, target_port: int):
        self.target_port, self.refuse, self.refused = target_port, 0, 0
        self.marker: bytes | None = None
        self.marker_applied, self.timed_out = False, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def unknown_outcome(self, marker: bytes, applied: bool) -> None:
        self.marker, self.marker_applied = marker, applied

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            lock, swallowed = threading.Lock(), set()
            threading.Thread(target=self._requests, args=(client, upstream, lock, swallowed), daemon=True).start()
            threading.Thread(target=self._responses, args=(upstream, client, lock, swallowed), daemon=True).start()

    @staticmethod
    def _read(sock: socket.socket, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                raise OSError("closed")
            data += chunk
        return data

    @staticmethod
    def _answer(client: socket.socket, lock: threading.Lock, version: int, stream: int, body: bytes) -> None:
        with lock:
            client.sendall(HEADER.pack(version | 0x80, 0, stream, ERROR, len(body)) + body)

    def _requests(self, client, upstream, lock, swallowed) -> None:
        try:
            while True:
                header = self._read(client, HEADER.size)
                version, _flags, stream, opcode, length = HEADER.unpack(header)
                body = self._read(client, length)
                if opcode == EXECUTE and self.refuse > 0:
                    self.refuse -= 1
                    self.refused += 1
                    self._answer(client, lock, version, stream, overloaded_body())
                    continue
                if opcode == EXECUTE and self.marker and self.marker in body:
                    self.marker, self.timed_out = None, self.timed_out + 1
                    if not self.marker_applied:
                        self._answer(client, lock, version, stream, cas_write_timeout_body())
                        continue
                    swallowed.add((stream, version))
                upstream.sendall(header + body)
        except OSError:
            for end in (client, upstream):
                end.close()

    def _responses(self, upstream, client, lock, swallowed) -> None:
        try:
            while True:
                header = self._read(upstream, HEADER.size)
                version, _flags, stream, _opcode, length = HEADER.unpack(header)
                body = self._read(upstream, length)
                if (stream, version & 0x7F) in swallowed:  # applied by the node; the client hears a timeout
                    swallowed.discard((stream, version & 0x7F))
                    self._answer(client, lock, version & 0x7F, stream, cas_write_timeout_body())
                    continue
                with lock:
                    client.sendall(header + body)
        except OSError:
            for end in (client, upstream):
                end.close()

    def close(self) -> None:
        self.listener.close()
