"""Free TCP ports on 127.0.0.1, for what starts throwaway servers on loopback: tests, benches,
scripts that run a Keycloak or a kube-apiserver beside them. A port is free when asked; the
caller binds it soon after (another process could take it in between: loopback only, retried
by whoever starts the server)."""
from __future__ import annotations

import socket


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: all held open until each is known, so none repeats."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()
