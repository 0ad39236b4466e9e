"""Only the data directory's owner may read faces, embeddings, photos and the
signing key (issue 25, finding 4): a real service process started with umask
022 makes its data directory 0700 and every file 0600 (visage.db, -wal, -shm,
the local issuer's key and JWKS), and on every start fixes what an older
version left 0755 / 0644. Checked on the files on disk."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from visage.store.sqlite import SqliteStore
from visage.loopback import free_port

REPO = Path(__file__).resolve().parents[2]
HANG_GUARD_SECONDS = 180


def modes(root: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def start_query(data_dir: Path, plain_channel) -> subprocess.Popen:
    """`python -m visage_query` on its own data directory (its own local issuer there), umask 022."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("VISAGE_AUTH_DIR", "VISAGE_TOKEN")}
    env.update(VISAGE_DATA_DIR=str(data_dir), VISAGE_QUERY_PORT=str(port), VISAGE_METRICS_PORT="0")
    process = subprocess.Popen([sys.executable, "-m", "visage_query"], env=env, cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               preexec_fn=lambda: os.umask(0o022))
    with plain_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), wait_for_ready=True,
                                                          timeout=HANG_GUARD_SECONDS)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    return process


@pytest.fixture
def stop():
    processes: list[subprocess.Popen] = []
    yield processes.append
    for process in processes:
        process.terminate()
        process.wait(timeout=60)


def assert_private(data_dir: Path, expected: set[str]) -> None:
    found = modes(data_dir)
    assert expected <= set(found), f"missing: {expected - set(found)}"
    for name, mode in found.items():
        wanted = 0o700 if (data_dir / name).is_dir() else 0o600
        assert mode == wanted, f"{name} is {mode:o}, not {wanted:o}"


def test_a_new_data_directory_is_0700_and_its_files_0600(tmp_path, plain_channel, stop):
    data_dir = tmp_path / "data"
    stop(start_query(data_dir, plain_channel))
    assert_private(data_dir, {".", "visage.db", "visage.db-wal", "visage.db-shm", "auth",
                              "auth/signing-key.pem", "auth/jwks.json"})


def test_every_start_fixes_what_an_older_version_left_readable(tmp_path, plain_channel, stop):
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    store = SqliteStore(data_dir / "visage.db")
    store.migrate()
    store.create_persona("Leonard")  # a -wal and -shm beside the database
    (data_dir / "thumbnails").mkdir()
    (data_dir / "thumbnails" / "face.jpg").write_bytes(b"\xff\xd8 a cached crop")
    (data_dir / "auth").mkdir()
    for path in [data_dir, data_dir / "thumbnails", data_dir / "auth"]:
        os.chmod(path, 0o755)
    for path in data_dir.rglob("*"):
        if path.is_file():
            os.chmod(path, 0o644)
    assert modes(data_dir)["visage.db-wal"] == 0o644
    stop(start_query(data_dir, plain_channel))
    store.close()
    assert_private(data_dir, {".", "visage.db", "visage.db-wal", "visage.db-shm", "thumbnails",
                              "thumbnails/face.jpg", "auth", "auth/signing-key.pem", "auth/jwks.json"})
