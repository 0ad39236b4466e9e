"""`visage ingest` whose service dies mid-run (issue 25, finding 7) used to say
"failures 0" although the images after the death were never sent. Here a real
ingest process is killed (SIGKILL) between two batches: the CLI is held on a
named pipe (the third file) until the first batch is stored and the service is
dead, so nothing depends on timing; then every image not confirmed stored is a
failure and the exit code says the service failed."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tests.waiting import wait_until

from visage.loopback import free_port

REPO = Path(__file__).resolve().parents[2]
HANG_GUARD_SECONDS = 300


def stored_images(db: Path) -> int:
    if not db.exists():
        return 0
    with sqlite3.connect(db, timeout=30) as conn:
        try:
            return conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        except sqlite3.OperationalError:  # not migrated yet
            return 0


def test_images_never_sent_after_the_service_died_are_failures(tmp_path, faces_dir, plain_channel):
    port = free_port()
    data = tmp_path / "data"
    env = dict(os.environ, VISAGE_DATA_DIR=str(data), VISAGE_INGEST_PORT=str(port), VISAGE_METRICS_PORT="0",
               VISAGE_WORKERS="1")
    service = subprocess.Popen([sys.executable, "-m", "visage_ingest"], env=env, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with plain_channel(f"127.0.0.1:{port}") as channel:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), wait_for_ready=True,
                                                      timeout=HANG_GUARD_SECONDS)
        photos = sorted((faces_dir / "bbt/raj").glob("*"))[:2] + sorted((faces_dir / "bbt/amy").glob("*"))[:2]
        held = tmp_path / "held.jpg"
        os.mkfifo(held)
        files = [*photos[:2], held, *photos[2:]]  # batches of 2: [p0, p1], [held, p2], [p3]
        cli = subprocess.Popen([sys.executable, "-m", "visage.cli", "ingest", "--address", f"127.0.0.1:{port}",
                                "--batch-size", "2", *map(str, files)], env=env, cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_until(lambda: stored_images(data / "visage.db") >= 2 or cli.poll() is not None,
                   "the first batch stored")
        assert cli.poll() is None, cli.communicate()
        service.send_signal(signal.SIGKILL)
        service.wait(timeout=HANG_GUARD_SECONDS)
        with open(held, "wb") as pipe:  # lets the CLI go on, to a dead service
            pipe.write(photos[0].read_bytes())
        out, err = cli.communicate(timeout=HANG_GUARD_SECONDS)
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
    assert cli.returncode == 2, (out, err)
    failures = next(line for line in out.splitlines() if line.startswith("failures"))
    assert int(failures.split()[-1]) == 3, out
    for path in files[2:]:
        assert f"failed: {path}: not ingested" in out, out
