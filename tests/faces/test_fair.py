"""Fair admission to the face workers: a caller with many images in flight
does not keep another caller's image waiting behind all of them."""
from __future__ import annotations

import threading
import time

from visage.faces.fair import FairSlots

WAIT = 30


def wait_until(condition) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_the_caller_with_fewer_images_in_flight_goes_first():
    slots = FairSlots(1)
    order: list[str] = []
    release = {name: threading.Event() for name in ("a1", "a2", "a3", "b1")}

    def use(caller: str, name: str) -> None:
        with slots.slot(caller):
            order.append(name)
            assert release[name].wait(WAIT)

    threads = {}
    for name, caller in (("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b")):
        threads[name] = threading.Thread(target=use, args=(caller, name))
        threads[name].start()
        wait_until(lambda n=name: n in order or slots.waiting() == len(threads) - len(order))
    assert order == ["a1"] and slots.waiting() == 3  # a2, a3 and then b1 arrived while a1 ran
    release["a1"].set()
    wait_until(lambda: len(order) == 2)
    assert order[1] == "b1"  # b had nothing in flight: it overtakes a's queue
    for name in ("b1", "a2", "a3"):
        release[name].set()
    for thread in threads.values():
        thread.join(WAIT)
    assert order == ["a1", "b1", "a2", "a3"]


def test_one_caller_alone_uses_every_slot():
    slots = FairSlots(3)
    inside, release = threading.Semaphore(0), threading.Event()

    def use() -> None:
        with slots.slot("a"):
            inside.release()
            release.wait(WAIT)

    threads = [threading.Thread(target=use) for _ in range(3)]
    for thread in threads:
        thread.start()
    for _ in range(3):
        assert inside.acquire(timeout=WAIT)
    release.set()
    for thread in threads:
        thread.join(WAIT)
