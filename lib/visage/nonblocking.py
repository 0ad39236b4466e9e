"""Response streams that hold no thread while idle (WatchEvents, WatchTrainingJobs):
grpc's sync server calls a behaviour marked `experimental_non_blocking` once, as
`behaviour(request, context, send)`, and frees its thread when it returns; the
stream stays open and whoever has `send` answers later (`send(message)`, and
`send(None)` to end it with the status set on the context). grpc's health Watch
works this way too. (A client stream cannot: the sync server reads its requests
on a thread of its own.)

Every layer that wraps a behaviour (visage.guard, metrics, errors, auth,
tracing) keeps such a behaviour non-blocking: it passes `send` on, marks its
wrapper (`like`), and does its end-of-stream work in a context callback
(`on_end`) instead of after a generator's last item."""
from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Executor

import grpc

MARK = "experimental_non_blocking"  # the attribute grpc's sync server reads


def is_non_blocking(behaviour: object) -> bool:
    return bool(getattr(behaviour, MARK, False))


def mark(function: Callable) -> Callable:
    """Marks a function (a servicer's method: before any decorator that copies its attributes)."""
    setattr(function, MARK, True)
    return function


def like(behaviour: object, wrapper: Callable) -> Callable:
    """`wrapper`, marked non-blocking when `behaviour` is."""
    if is_non_blocking(behaviour):
        setattr(wrapper, MARK, True)
    return wrapper


def context_of(behaviour: object, args: tuple) -> grpc.ServicerContext:
    """The context among a behaviour's arguments: last, or before `send` for a non-blocking one."""
    return args[-2] if is_non_blocking(behaviour) else args[-1]


def on_end(context: grpc.ServicerContext, callback: Callable[[], None]) -> None:
    """Runs `callback` once the call has ended (its status sent, or the caller gone);
    at once when it already has."""
    if not context.add_callback(callback):
        callback()


class Stream:
    """The sending side of one open non-blocking response stream. `wake()` runs a
    delivery (`deliver`, the subclass's: sends what is new with `send`) on a shared
    pool, at most one at a time (a wake-up during one makes it run again), so
    messages go out in order and an idle stream holds no thread. `end(error)` ends
    the stream before the next delivery (`finish(error)`: None for OK, else the
    error's status, visage.errors.end_stream); `close()` - the call ended (caller
    gone, deadline, status sent) - stops deliveries."""

    def __init__(self, pool: Executor, send: Callable[[object], None],
                 finish: Callable[[Exception | None], None]) -> None:
        self.send, self._pool, self._finish_with = send, pool, finish
        self._lock = threading.Lock()
        self._running = self._again = self._closed = False
        self._ending: tuple[Exception | None] | None = None

    def deliver(self) -> None:
        raise NotImplementedError

    def again(self) -> None:
        """From `deliver`: run it once more (there is more to send)."""
        with self._lock:
            self._again = True

    def wake(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._again = True
            if self._running:
                return
            self._running = True
        self._pool.submit(self._run)

    def end(self, error: Exception | None = None) -> None:
        with self._lock:
            if self._closed or self._ending is not None:
                return
            self._ending = (error,)
        self.wake()

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._closed or (not self._again and self._ending is None):
                    self._running = False
                    return
                ending, self._again = self._ending, False
            if ending is not None:
                self._finish(ending[0])
                return
            try:
                self.deliver()
            except Exception as error:  # noqa: BLE001 - the stream ends with its status
                self._finish(error)
                return

    def _finish(self, error: Exception | None) -> None:
        with self._lock:
            self._closed, self._running = True, False
        self.close()  # a subclass forgets the stream
        self._finish_with(error)
