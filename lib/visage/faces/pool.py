"""A bounded pool of face-pipeline worker processes.

Why processes: dlib's detector, shape predictor and encoder hold the GIL while
they run (measured: 2 threads on 2 cores run the bare pipeline at ~1.0x the
images/s of one thread, 2 processes at ~1.9x; see bench/bench_ingest.py), so
threads would serialise. Each worker loads the dlib models once, in its
initializer. Workers are spawned, not forked: the parent runs gRPC threads,
which must not be forked. Workers die with their service (visage.lifeline):
every worker is started by the thread that builds or replaces the pool, a
thread that lives until the service stops.

Back-pressure: at most two cost units per worker are admitted (two typical
images: one running, one queued); further callers block in analyze() instead
of piling image bytes into an unbounded queue, and are admitted fairly across
callers (faces.fair). An image's cost is its detection pixels (image_cost),
so heavy images leave room for light ones: on two workers, images of 6000x6000
(cost 3) run one at a time while the other worker takes light images, instead
of both workers being held ~0.7 s per image. The price: a batch of only such
near-square images over ~1560 px a side runs on half the workers. Photos of
other shapes (a 4:3 phone photo costs 2) still fill every worker."""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from visage import lifeline
from visage.config import Config
from visage.faces.detectors import DetectorUnavailable
from visage.faces.fair import FairSlots
from visage.faces.pipeline import (
    AnalyzedImage,
    FacePipeline,
    FoundFace,
    ImageTooLarge,
    InvalidImage,
    NotAFace,
    detection_pixels,
    open_image,
)
from visage.faces.settings import FaceSettings

log = logging.getLogger(__name__)

IN_FLIGHT_PER_WORKER = 2  # cost units per worker: one typical image running, one queued
# One cost unit: ~1 megapixel of detection, about 0.3 s of HOG on one core. A
# typical photo costs 1, a phone photo (1600x1200 for detection) 2, a
# 6000x6000 image 3.
UNIT_PIXELS = 1_000_000


class WorkerCrashed(RuntimeError):
    """A worker process died twice while analysing the same image."""


# What PipelinePool.analyze raises for one image it cannot analyse (each a kind visage.errors answers).
ANALYSIS_ERRORS = (InvalidImage, ImageTooLarge, DetectorUnavailable, WorkerCrashed, NotAFace)


_pipeline: FacePipeline | None = None  # the worker process's own pipeline


def _load_pipeline(config: Config, settings: FaceSettings, parent_pid: int) -> None:
    global _pipeline
    # A worker holds nothing worth saving: if its service dies (even by SIGKILL), so does it.
    lifeline.die_with_parent(signal.SIGKILL, parent_pid)
    _pipeline = FacePipeline(config, settings)


def _analyze_in_worker(content: bytes) -> AnalyzedImage:
    return _pipeline.analyze(content)


def _describe_box_in_worker(content: bytes, box: tuple[int, int, int, int]) -> FoundFace:
    return _pipeline.describe_box(content, box)


def _ready() -> int:
    return os.getpid()


def worker_count(config: Config) -> int:
    """config.workers, where 0 means one worker per core this process may use
    (VISAGE_SERVICE_CPUS or a container's cpuset may allow fewer than the machine has)."""
    return config.workers or len(os.sched_getaffinity(0)) or 1


class PipelinePool:
    def __init__(self, config: Config, settings: FaceSettings | None = None) -> None:
        self.config = config
        self.settings = settings or FaceSettings.from_env()
        self.workers = worker_count(config)
        self._slots = FairSlots(self.workers * IN_FLIGHT_PER_WORKER)
        self._restart_lock = threading.Lock()
        self._executor = self._start_executor()

    def analyze(self, content: bytes) -> AnalyzedImage:
        """Blocking and thread-safe. Raises InvalidImage / ImageTooLarge from the
        pipeline, DetectorUnavailable from a remote detector, WorkerCrashed."""
        return self._admitted(content, _analyze_in_worker, content)

    def describe_box(self, content: bytes, box: tuple[int, int, int, int]) -> FoundFace:
        """FacePipeline.describe_box in a worker: the face inside a box drawn on the image.
        Blocking and thread-safe. Raises NotAFace, InvalidImage, WorkerCrashed."""
        return self._admitted(content, _describe_box_in_worker, content, box)

    def _admitted(self, content: bytes, work, *args):
        """Runs work(*args) in a worker once the image is admitted (see the module doc)."""
        # Size, format and header dimensions are checked here, before the bytes
        # take a worker slot: a decompression bomb costs its sender microseconds
        # and never delays another caller's image.
        header = open_image(content, self.config.max_image_bytes, self.settings.max_pixels,
                            self.settings.min_face_size)
        with self._slots.slot(cost=self.image_cost(*header.size)):
            try:
                return self._run(work, *args)
            except BrokenProcessPool:
                # A crash fails every image in flight, not just the culprit: retry once.
                log.warning("face worker process died; restarting the pool and retrying")
                try:
                    return self._run(work, *args)
                except BrokenProcessPool:
                    raise WorkerCrashed("the face pipeline crashed twice on this image") from None

    def image_cost(self, width: int, height: int) -> int:
        """Admission cost in units (at least 1) of an image this size: its
        detection pixels, known from the header before any decoding."""
        return max(1, round(detection_pixels(width, height, self.settings.detect_max_side) / UNIT_PIXELS))

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def _run(self, work, *args):
        executor = self._executor
        try:
            return executor.submit(work, *args).result()
        except BrokenProcessPool:
            self._replace_broken(executor)
            raise

    def _replace_broken(self, broken: ProcessPoolExecutor) -> None:
        with self._restart_lock:
            if self._executor is broken:  # another thread may have replaced it already
                self._executor = self._start_executor()
        broken.shutdown(wait=False)

    def _start_executor(self) -> ProcessPoolExecutor:
        executor = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_load_pipeline,
            initargs=(self.config, self.settings, os.getpid()),
        )
        # Start every worker and load its models now, so the first images do not pay for it.
        pids = {future.result() for future in [executor.submit(_ready) for _ in range(self.workers)]}
        log.info("face pipeline pool ready: %d workers (pids %s), detector %s",
                 self.workers, sorted(pids), "azure" if self.settings.uses_azure else self.settings.detector)
        return executor
