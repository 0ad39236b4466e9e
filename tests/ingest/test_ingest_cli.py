"""`visage ingest` against a running server, as a user runs it."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys

from tests.ingest.conftest import png_without_face
from visage.loopback import free_port


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "visage.cli", "ingest", *args],
                          capture_output=True, text=True, timeout=240)


def summary_of(stdout: str) -> dict[str, int]:
    return {name.strip(): int(value) for name, value in re.findall(r"^([a-z ]+?)\s+(\d+)$", stdout, re.M)}


def test_cli_walks_folders_and_prints_a_summary(ingest_server, faces_dir, tmp_path):
    stub, store, port = ingest_server
    photos = tmp_path / "photos"
    shutil.copytree(faces_dir / "scenes", photos / "scenes")
    shutil.copy(faces_dir / "noise" / "happy.jpg", photos / "happy.jpg")
    (photos / "nested" / "deeper").mkdir(parents=True)
    (photos / "nested" / "deeper" / "sky.png").write_bytes(png_without_face())
    (photos / "nested" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (photos / "notes.txt").write_text("not an image, not sent")

    first = run_cli(str(photos), str(faces_dir / "edge" / "obama_small.jpg"),
                    "--address", f"127.0.0.1:{port}", "--batch-size", "3")

    assert first.returncode == 1, first.stderr  # one file failed
    assert summary_of(first.stdout) == {"images": 8, "faces found": 4 + 2 + 5 + 2 + 1 + 1,
                                        "images without a face": 1, "duplicates skipped": 0, "failures": 1}
    assert re.search(r"failed: .*nested/broken\.jpg: INVALID_ARGUMENT: .*corrupt or truncated", first.stdout)
    assert "ingest: 100%" in first.stderr and "8/8" in first.stderr  # the progress bar
    assert (store.count_images(), store.count_faces()) == (7, 15)
    stored_names = sorted(image.filename for image in store.list_images(0, 100))
    assert stored_names == sorted(["bbt1.jpg", "bbt2.jpg", "bbt3.jpg", "two_people.jpg", "happy.jpg", "sky.png",
                                   "obama_small.jpg"])  # names only: no client directory is stored
    listed = dict(re.findall(r"^([0-9a-f]{64}-\d+)\s+(\S+)$", first.stdout, re.M))  # face id -> file
    assert set(listed) == {face_id for ids, _ in store.iter_embeddings() for face_id in ids}
    happy = [face_id for face_id, name in listed.items() if name.endswith("happy.jpg")]
    assert len(happy) == 1 and store.get_face(happy[0]) is not None

    (photos / "nested" / "broken.jpg").unlink()
    again = run_cli(str(photos), "--address", f"127.0.0.1:{port}")

    assert again.returncode == 0, again.stdout + again.stderr
    assert summary_of(again.stdout) == {"images": 6, "faces found": 0, "images without a face": 0,
                                        "duplicates skipped": 6, "failures": 0}
    assert (store.count_images(), store.count_faces()) == (7, 15)


def test_cli_reports_an_unreachable_service(tmp_path, faces_dir):
    port = free_port()  # nobody listens on it
    result = run_cli(str(faces_dir / "edge" / "obama_small.jpg"), "--address", f"127.0.0.1:{port}")
    assert result.returncode == 2
    assert f"ingest service at 127.0.0.1:{port} failed: UNAVAILABLE" in result.stderr
