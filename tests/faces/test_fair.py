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


def admission_order(slots: FairSlots, requests: list[tuple[str, str, int]]) -> list[str]:
    """Queues `requests` (name, caller, cost) in this order behind one request
    holding every unit, releases it, and returns the order they were admitted in
    (each holds its units until all have been admitted or are waiting)."""
    order: list[str] = []
    release = threading.Event()

    def use(caller: str, name: str, cost: int) -> None:
        with slots.slot(caller, cost):
            order.append(name)
            release.wait(WAIT)

    blocker = threading.Thread(target=use, args=("blocker", "blocker", slots.capacity))
    blocker.start()
    wait_until(lambda: order == ["blocker"])
    threads = []
    for name, caller, cost in requests:
        threads.append(threading.Thread(target=use, args=(caller, name, cost)))
        threads[-1].start()
        wait_until(lambda: slots.waiting() == len(threads))
    release.set()  # everyone admitted from now on leaves again at once
    for thread in [blocker, *threads]:
        thread.join(WAIT)
    return order[1:]


def test_callers_are_charged_by_cost_so_a_light_caller_overtakes_a_heavy_callers_queue():
    # One unit is one light image; a heavy image costs 3. Both callers queue three images,
    # the heavy caller first: after its first, the light caller's all go before its 2nd and 3rd.
    order = admission_order(FairSlots(4), [("h1", "heavy", 3), ("h2", "heavy", 3), ("h3", "heavy", 3),
                                           ("l1", "light", 1), ("l2", "light", 1), ("l3", "light", 1)])
    assert order == ["h1", "l1", "l2", "l3", "h2", "h3"]


def test_light_requests_pass_a_waiting_heavy_one_only_within_the_room_it_leaves():
    # h1 (5 of 6 units) waits for h0 (4), ahead of the light caller (it came first, with nothing
    # charged yet). One light unit may run beside h0 without delaying h1;
    # a second would fit too, but h1 could then not start the moment h0 leaves: it waits.
    slots = FairSlots(6)
    order: list[str] = []
    release = {name: threading.Event() for name in ("h0", "h1", "l1", "l2")}

    def use(caller: str, name: str, cost: int) -> None:
        with slots.slot(caller, cost):
            order.append(name)
            release[name].wait(WAIT)

    for count, (name, caller, cost) in enumerate(
            (("h0", "first", 4), ("h1", "second", 5), ("l1", "light", 1), ("l2", "light", 1)), start=1):
        threading.Thread(target=use, args=(caller, name, cost)).start()
        wait_until(lambda n=count: len(order) + slots.waiting() == n)
    assert order == ["h0", "l1"] and slots.waiting() == 2 and slots.free == 1
    release["h0"].set()
    wait_until(lambda: len(order) == 3)
    assert order[2] == "h1"  # started the moment h0 left
    for event in release.values():
        event.set()
    wait_until(lambda: len(order) == 4)
