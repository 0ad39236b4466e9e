"""Erased means unreadable in the files a real Apache Cassandra node writes (issue 25, finding 3).

A shared photo (made unique: other tests store the same photo on this node) is ingested by the
ingest servicer (real face analysis), labelled for a persona, flushed to SSTables, and erased with
the persona (DeletePersona erase_faces, through the domain layer). The erasure alone leaves its
sampled bytes, its faces' embeddings and crops, its file name and the persona's name in the node's
SSTables and commit log: the scan below finds them (so it can fail). `nodetool garbagecollect` on
the keyspace (what the erasable tables' compaction options do at their next compaction:
README "Privacy") removes them from the SSTables; once the commit log segment that took the writes
is recycled (after 32 MiB more writes on this node, and a flush), no file under the node's data
directory holds any of them. The keyspace's erasable tables have gc_grace_seconds 0 here.
Waits are for the condition, with a hang guard; nothing asserts on time."""
from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visage.config import Config
from visage.faces.pool import PipelinePool
from visage.store.cassandra import CassandraStore
from visage.store.records import LabelRecord, embedding_to_bytes
from visage.v1 import resources_pb2 as pb
from visage_ingest.server import IngestServicer

from tests.conftest import migrated_keyspace

pytestmark = [pytest.mark.cassandra, pytest.mark.timeout(900)]  # flushes, compactions, 34 MiB of writes

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts/cassandra.py"
NODE_DATA = REPO / "build/cassandra/data"  # scripts/cassandra.py's single node: data, commit log, caches, hints
HANG_GUARD_SECONDS = 150
SAMPLES = 24
CHUNK = 24
COMMITLOG_SEGMENT_BYTES = 32 * 1024 * 1024  # scripts/cassandra.py: commitlog_segment_size


@pytest.fixture
def keyspace(cassandra_session_keyspace):
    """An Apache-backend store on a keyspace of its own whose erasable tables keep no tombstone grace."""
    if not NODE_DATA.is_dir():
        pytest.skip(f"the node's files are not on this machine ({NODE_DATA}): scripts/cassandra.py's node only")
    config, _admin = cassandra_session_keyspace
    config = dataclasses.replace(config, keyspace=f"{config.keyspace}_disk", backend="apache", erased_grace_seconds=0)
    yield from migrated_keyspace(config)


def nodetool(*arguments: str) -> None:
    subprocess.run([sys.executable, str(SCRIPT), "nodetool", *arguments], check=True, timeout=HANG_GUARD_SECONDS)


def unique_photo(photo: Path) -> bytes:
    """The photo with faint noise of its own: every compressed byte differs from any other copy's."""
    pixels = np.asarray(Image.open(photo).convert("RGB"), dtype=np.int16)
    noise = np.random.default_rng(uuid.uuid4().int % 2 ** 32).integers(-3, 4, pixels.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def secrets_of(store: CassandraStore, image_id: str, persona_name: str) -> dict[str, bytes]:
    """Sampled chunks of the stored photo, each face's embedding and crop, the file name, the persona's name."""
    content = store.get_image_content(image_id)
    start = content.index(b"\xff\xda") + 64  # the compressed pixels: headers and tables are any JPEG's alike
    step = (len(content) - CHUNK - start) // SAMPLES
    secrets = {f"photo@{i}": content[i:i + CHUNK] for i in range(start, start + step * SAMPLES, step)}
    for face in store.faces_of_image(image_id):
        secrets[f"embedding {face.index}"] = embedding_to_bytes(face.embedding)[64:64 + CHUNK]
        secrets[f"crop {face.index}"] = face.crop_jpeg[len(face.crop_jpeg) // 2:][:CHUNK]
    secrets["file name"] = store.get_image(image_id).filename.encode()
    secrets["persona name"] = persona_name.encode()
    return secrets


def readable(secrets: dict[str, bytes], where: Path = NODE_DATA) -> dict[str, list[str]]:
    """secret -> the files under `where` that hold it."""
    found: dict[str, list[str]] = {}
    for path in sorted(p for p in where.rglob("*") if p.is_file()):
        try:
            data = path.read_bytes()
        except FileNotFoundError:  # a compaction or a recycled segment removed it meanwhile
            continue
        for name, secret in secrets.items():
            if secret in data:
                found.setdefault(name, []).append(str(path.relative_to(NODE_DATA)))
    return found


def wait_unreadable(secrets: dict[str, bytes], where: Path = NODE_DATA) -> None:
    deadline = time.monotonic() + HANG_GUARD_SECONDS
    while (left := readable(secrets, where)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"{len(left)} of {len(secrets)} erased secrets still readable: {left}"


def roll_commit_log(store: CassandraStore) -> None:
    """Fills the commit log segment that took the erased writes, then flushes every table: the
    node recycles (deletes) a segment once it is full and nothing in it is unflushed."""
    filler = "x" * (1024 * 1024)
    for number in range(COMMITLOG_SEGMENT_BYTES // len(filler) + 2):
        store._run("INSERT INTO {ks}.meta (key, value) VALUES (?, ?)", (f"commit-log-filler-{number}", filler))
    nodetool("flush")
    nodetool("flush", "system")  # Paxos state (system.paxos) too: it holds each lightweight transaction's update


def test_an_erased_photo_leaves_the_nodes_files_after_garbagecollect(keyspace, faces_dir):
    config, store = keyspace
    pool = PipelinePool(Config(workers=1))
    try:
        ingested = IngestServicer(store, pool).ingest(unique_photo(faces_dir / "bbt/raj/raj1.png"),
                                                      f"erase-me-{uuid.uuid4().hex[:12]}.jpg")
    finally:
        pool.close()
    image_id = ingested.image.image_id
    assert ingested.faces, "the photo has a face"
    persona_name = f"Quilliam Erasable {uuid.uuid4().hex[:8]}"
    persona = store.create_persona(persona_name)
    store.put_label(LabelRecord(ingested.faces[0].face_id, persona.persona_id, pb.VERDICT_BELONGS))
    secrets = secrets_of(store, image_id, persona_name)
    nodetool("flush", config.keyspace)  # on disk, as anything stored a while before its erasure
    assert set(readable(secrets, NODE_DATA / "data")) == set(secrets)  # the scan sees them while stored

    erasure = store.delete_persona(persona.persona_id, erase_faces=True)
    assert erasure.image_ids == [image_id]
    nodetool("flush", config.keyspace)
    assert set(readable(secrets, NODE_DATA / "data")) == set(secrets)  # a delete alone writes tombstones only

    nodetool("garbagecollect", config.keyspace)
    wait_unreadable(secrets, NODE_DATA / "data")
    roll_commit_log(store)
    wait_unreadable(secrets)
