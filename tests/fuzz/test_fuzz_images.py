"""Mutated real images (every format Pillow writes, headers that lie about
their size, random edits) never fail in any way but a clear refusal: the face
pipeline in-process on thousands, and the Classify RPC on a sample."""
from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from visage.config import Config
from visage.faces.pipeline import FacePipeline, ImageTooLarge, InvalidImage
from visage.faces.settings import FaceSettings
from visage.v1 import classify_pb2, classify_pb2_grpc

from fuzz_generators import CALL_TIMEOUT, mutate

SEED = 1313
PIPELINE_CASES = 4000
# Headers may claim any size: a low limit keeps each case cheap (what is
# refused, and how, is the same at any limit).
FUZZ_MAX_PIXELS = 1_000_000
RPC_CASES = 200
ALLOWED_RPC_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}


@pytest.fixture(scope="module")
def pipeline() -> FacePipeline:
    return FacePipeline(Config(), FaceSettings(max_pixels=FUZZ_MAX_PIXELS))


# 4000 analyses take 1-2 min on two idle cores and over the default 300 s while other
# jobs keep both busy: the limit is only there to catch a hang.
@pytest.mark.timeout(1200)
def test_mutated_images_are_analysed_or_refused_as_invalid(fuzz_stack, pipeline):
    rng = random.Random(SEED)
    outcomes = {"analysed": 0, "refused": 0}
    for case in range(PIPELINE_CASES):
        content = mutate(rng.choice(fuzz_stack.images), rng) if case % 10 else rng.choice(fuzz_stack.images)
        try:
            pipeline.analyze(content)
            outcomes["analysed"] += 1
        except (InvalidImage, ImageTooLarge) as error:
            assert str(error), f"case {case} (seed {SEED}): refused without a message"
            outcomes["refused"] += 1
        except Exception as error:  # noqa: BLE001 - anything else is the bug this suite looks for
            pytest.fail(f"case {case} (seed {SEED}): {type(error).__name__}: {error}")
    assert sum(outcomes.values()) == PIPELINE_CASES and outcomes["analysed"] and outcomes["refused"], outcomes


def test_mutated_images_get_a_clear_status_from_classify(fuzz_stack):
    rng = random.Random(SEED + 1)
    contents = [mutate(rng.choice(fuzz_stack.images), rng) for _ in range(RPC_CASES)]
    with grpc.insecure_channel(f"127.0.0.1:{fuzz_stack.mesh.ports['classifier']}",
                               options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        stub = classify_pb2_grpc.ClassifyServiceStub(channel)

        def classify(content: bytes) -> grpc.StatusCode:
            try:
                stub.Classify(classify_pb2.ClassifyRequest(content=content), timeout=CALL_TIMEOUT)
                return grpc.StatusCode.OK
            except grpc.RpcError as error:
                return error.code()

        with ThreadPoolExecutor(max_workers=4) as threads:
            codes = list(threads.map(classify, contents))
    bad = [(n, code) for n, code in enumerate(codes) if code not in ALLOWED_RPC_CODES | {grpc.StatusCode.OK}]
    assert not bad, f"seed {SEED + 1}: unexpected statuses {bad[:10]}"
    fuzz_stack.assert_all_healthy()
