"""Ingest fixtures: one worker pool per session (spawning workers and loading
dlib models costs a second or two), a fresh server + store per test."""
from __future__ import annotations

import io
from pathlib import Path

import grpc
import pytest
from PIL import Image

from visage.config import Config
from visage.faces.pool import PipelinePool
from visage.v1 import ingest_pb2_grpc
from visage_ingest.server import start


@pytest.fixture(scope="session")
def pool():
    pool = PipelinePool(Config(workers=2))
    yield pool
    pool.close()


@pytest.fixture
def ingest_server(config, sqlite_store, pool):
    """(stub, store, port) of a real server on a free port."""
    service = start(config, sqlite_store, "127.0.0.1:0", pool=pool)
    channel = grpc.insecure_channel(f"127.0.0.1:{service.port}")
    yield ingest_pb2_grpc.IngestServiceStub(channel), sqlite_store, service.port
    channel.close()
    service.stop(None)


def png_without_face(size=(320, 240), colour=(90, 140, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png() -> bytes:
    """64 Mpx declared in a few KB: decoding it would take 64 MB+."""
    buffer = io.BytesIO()
    Image.new("1", (8000, 8000)).save(buffer, format="PNG")
    return buffer.getvalue()


def truncated(path: Path) -> bytes:
    content = path.read_bytes()
    return content[: len(content) // 2]


OVER_DEFAULT_LIMIT = b"\xff\xd8\xff" + b"\0" * (20 * 1024 * 1024)  # one byte-ish over 20 MB
