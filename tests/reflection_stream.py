"""A reflection request stream that stays open until closed: one list_services request, then
nothing (how an anonymous caller holds a reflection stream open)."""
from __future__ import annotations

import queue

from grpc_reflection.v1alpha import reflection_pb2


class OpenReflectionRequests:
    def __init__(self) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._queue.put(reflection_pb2.ServerReflectionRequest(list_services=""))

    def close(self) -> None:
        self._queue.put(None)

    def __iter__(self):
        while (item := self._queue.get()) is not None:
            yield item
