"""Concurrent writers (threads and processes) and a writer killed mid-stream: no
acknowledged write may be lost, and a consumer following the log sees every event."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from store_spec import open_spec
from visage.store.records import FaceRecord, ImageRecord, LabelRecord
from visage.v1 import resources_pb2 as pb

WRITER = Path(__file__).parent / "store_writer.py"


def put_face(store, face_id: str = "face-1") -> str:
    image = ImageRecord("img-" + face_id, "x.jpg", "image/jpeg", 1, 1, 1, 1, pb.IMAGE_STATUS_FACES_FOUND)
    face = FaceRecord(face_id, image.image_id, 0, (0, 0, 1, 1), [], np.zeros(128, np.float32))
    store.put_image(image, b"x", [face])
    return face_id


def progress_events(store, cursor: str = "") -> list:
    return [e for e in store.read_events(cursor, 100_000) if e.type == pb.EVENT_TYPE_TRAINING_PROGRESS]


def start_writer(spec: dict, name: str, count: int, face_id: str = "", personas: list[str] = ()) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WRITER), json.dumps(spec), name, str(count), face_id,
                             ",".join(personas)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_threads_append_events_and_labels_without_loss(store):
    face = put_face(store)
    personas = [store.create_persona(f"p{i}").persona_id for i in range(8)]

    def work(worker: int) -> None:
        for n in range(25):
            store.append_event(pb.EVENT_TYPE_TRAINING_PROGRESS, f"t{worker}", {"n": str(n)})
        store.put_label(LabelRecord(face, personas[worker], pb.VERDICT_NOT_BELONGS, f"t{worker}"))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    events = progress_events(store)
    assert sorted((e.subject, int(e.attributes["n"])) for e in events) == \
        sorted((f"t{w}", n) for w in range(8) for n in range(25))
    assert len({e.cursor for e in events}) == len(events)
    assert {l.persona_id for l in store.labels_of_face(face)} == set(personas)


def test_processes_append_events_and_labels_while_a_consumer_follows(store, store_spec):
    face = put_face(store)
    personas = [store.create_persona(f"p{i}").persona_id for i in range(6)]
    writers = [start_writer(store_spec, f"proc{w}", 40, face, personas[w * 3:(w + 1) * 3]) for w in range(2)]
    followed: dict[str, object] = {}
    cursor = store.latest_cursor()
    deadline = time.monotonic() + 120
    while any(w.poll() is None for w in writers) and time.monotonic() < deadline:
        for event in store.read_events(cursor, 50):  # small pages: the consumer runs behind the writers
            followed[event.cursor] = event
            cursor = event.cursor
        time.sleep(0.01)
    for writer in writers:
        _out, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err
    time.sleep(0.2)
    while batch := store.read_events(cursor, 50):
        followed.update((e.cursor, e) for e in batch)
        cursor = batch[-1].cursor
    written = sorted((e.subject, int(e.attributes["n"])) for e in progress_events(store))
    assert written == sorted((f"proc{w}", n) for w in range(2) for n in range(40))
    seen = sorted((e.subject, int(e.attributes["n"])) for e in followed.values()
                  if e.type == pb.EVENT_TYPE_TRAINING_PROGRESS)
    assert seen == written  # the live consumer missed nothing
    assert {l.persona_id for l in store.labels_of_face(face)} == set(personas)


def test_acknowledged_writes_survive_a_killed_writer(store, store_spec):
    face = put_face(store)
    personas = [store.create_persona(f"p{i}").persona_id for i in range(3)]
    writer = start_writer(store_spec, "victim", 100_000, face, personas)
    acked = -1
    while acked < 30:
        line = writer.stdout.readline()
        assert line, writer.stderr.read()
        acked = int(line.split()[1])
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    for line in writer.stdout:  # acks printed before the kill landed
        acked = int(line.split()[1])
    store.close()
    reopened = open_spec(store_spec)
    try:
        numbers = {int(e.attributes["n"]) for e in progress_events(reopened) if e.subject == "victim"}
        assert set(range(acked + 1)) <= numbers
        assert {l.persona_id for l in reopened.labels_of_face(face)} == set(personas)
    finally:
        reopened.close()
