"""PipelinePool: worker processes give the same answers as the in-process
pipeline, errors cross the process boundary intact, and concurrency is bounded."""
from __future__ import annotations

import contextvars
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from tests.faces.conftest import encode, read
from visage.faces.fair import CALLER
from visage.config import Config
from visage.faces.pipeline import ImageTooLarge, InvalidImage
from visage.faces.pool import IN_FLIGHT_PER_WORKER, PipelinePool, worker_count


@pytest.fixture(scope="module")
def pool():
    pool = PipelinePool(Config(workers=2, max_image_bytes=1_000_000))
    yield pool
    pool.close()


def test_concurrent_callers_get_the_in_process_results(pool, pipeline, faces_dir):
    contents = [read(path) for path in sorted(faces_dir.glob("scenes/*.jpg")) + sorted(faces_dir.glob("noise/*"))]
    with ThreadPoolExecutor(max_workers=8) as threads:
        pooled = list(threads.map(pool.analyze, contents))
    for content, result in zip(contents, pooled):
        expected = pipeline.analyze(content)
        assert [face.box for face in result.faces] == [face.box for face in expected.faces]
        assert all(np.allclose(a.embedding, b.embedding, atol=1e-5) for a, b in zip(result.faces, expected.faces))


def test_errors_cross_the_process_boundary(pool, faces_dir):
    with pytest.raises(InvalidImage, match="not an image"):
        pool.analyze(b"GIF89a but not really")
    with pytest.raises(ImageTooLarge, match="limit is 1,000,000 bytes"):
        pool.analyze(b"\xff" * 1_000_001)
    assert len(pool.analyze(read(faces_dir / "edge" / "obama_small.jpg")).faces) == 1  # still working


def test_pool_is_sized_to_config_and_bounds_in_flight_work(pool):
    assert pool.workers == 2
    assert pool._slots.free == 2 * IN_FLIGHT_PER_WORKER  # all slots free when idle


def test_zero_workers_means_one_per_core(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(6)))
    assert worker_count(Config(workers=0)) == 6
    assert worker_count(Config(workers=3)) == 3


def test_a_light_callers_image_is_analysed_before_a_heavy_callers_queued_one(faces_dir):
    """Images are charged by detection cost: a 6000x6000 JPEG fills a one-worker
    pool alone, and a light image sent after a second one is admitted first."""
    pool = PipelinePool(Config(workers=1))
    heavy = encode(Image.new("RGB", (6000, 6000), "grey"))
    light = read(faces_dir / "edge" / "obama_small.jpg")
    assert (pool.image_cost(6000, 6000), pool.image_cost(*Image.open(io.BytesIO(light)).size)) == (3, 1)
    admitted: list[str] = []
    run = pool._run
    pool._run = lambda work, content: admitted.append("light" if content is light else "heavy") or run(work, content)

    def analyze_as(caller: str, content: bytes):
        CALLER.set(caller)
        return pool.analyze(content)

    try:
        with ThreadPoolExecutor(max_workers=3) as threads:
            with pool._slots.slot("test", pool._slots.capacity):  # hold the pool while both callers queue
                futures = []
                for caller, content in (("heavy", heavy), ("heavy", heavy), ("light", light)):
                    futures.append(threads.submit(contextvars.copy_context().run, analyze_as, caller, content))
                    wait_until(lambda: pool._slots.waiting() == len(futures))
            for future in futures:
                future.result(timeout=120)
    finally:
        pool.close()
    # Counting images, both heavy ones would share the pool's two units and the light one wait for them.
    assert admitted == ["heavy", "light", "heavy"]


def wait_until(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)
