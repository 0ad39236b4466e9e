"""`python -m visage_ingest` as a process: SIGTERM lets the in-flight bulk
ingest finish, leaves nothing half-written, and the process exits cleanly."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from visage.store.sqlite import SqliteStore
from visage.v1 import ingest_pb2, ingest_pb2_grpc
from visage.loopback import free_port


def wait_until_serving(address: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            assert process.poll() is None, "ingest service exited during start-up"
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                time.sleep(0.2)
    pytest.fail(f"ingest service on {address} did not become ready")


def wait_for_log(path, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert time.monotonic() < deadline, f"{text!r} never logged"
        time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_finishes_in_flight_work_then_exits(tmp_path, faces_dir):
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "VISAGE_DATA_DIR": str(tmp_path / "data"), "VISAGE_INGEST_PORT": str(port),
           "VISAGE_WORKERS": "1", "VISAGE_STORE": "sqlite"}
    log_path = tmp_path / "ingest.log"
    log_file = log_path.open("w")  # a file, not a pipe: an unread pipe could fill and block the service
    process = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "visage_ingest"], env=env,
                               stderr=log_file, text=True)
    try:
        wait_until_serving(address, process)
        paths = sorted(faces_dir.glob("scenes/*.jpg")) + sorted(faces_dir.glob("presidents/*/*.jpg"))
        some_sent = threading.Event()

        def requests():
            for index, path in enumerate(paths):
                if index == 3:
                    some_sent.set()
                yield ingest_pb2.IngestImagesRequest(content=path.read_bytes(), filename=path.name)

        answer: dict = {}

        def bulk() -> None:
            with grpc.insecure_channel(address) as channel:
                answer["summary"] = ingest_pb2_grpc.IngestServiceStub(channel).IngestImages(requests())

        client = threading.Thread(target=bulk)
        client.start()
        assert some_sent.wait(30)
        # Health turns SERVING just before serve_until_signalled installs its
        # handlers: signal once work is visibly under way, well after that.
        wait_for_log(log_path, "ingested image")
        process.send_signal(signal.SIGTERM)
        client.join(120)

        summary = answer["summary"]
        assert summary.images == len(paths) and summary.failures == 0
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack into the log
            process.wait()
        log_file.close()
        print(log_path.read_text())

    logs = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    messages = [entry["msg"] for entry in logs]
    assert all(entry["service"] == "ingest" for entry in logs)
    assert "shutting down" in messages and "ingest stopped" in messages
    ingested = [index for index, message in enumerate(messages) if message.startswith("ingested image")]
    assert len(ingested) == len(paths)
    assert messages.index("shutting down") < ingested[-1]  # the signal came mid-stream; work went on
    store = SqliteStore(tmp_path / "data" / "visage.db")
    try:
        assert store.count_images() == len(paths)
        for result in summary.results:
            image = store.get_image(result.image_id)
            assert image.face_count == len(store.faces_of_image(result.image_id)) == result.face_count
    finally:
        store.close()
