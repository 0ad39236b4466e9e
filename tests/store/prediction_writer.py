"""A separate re-classification writer for the kill test:
    python prediction_writer.py SPEC_JSON FACES BATCH
writes predictions of FACES faces ("face00000"...) as put_prediction_columns batches
of BATCH faces, version after version from 2 on, each version's batches in face id
order like a re-classification; prints "ack VERSION BATCH_INDEX" after each
acknowledged batch and waits for a line on stdin before the next one (so it never runs
ahead of the test reading its acks: the batch in flight when it is killed is known);
runs until it is killed or stdin closes."""
from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from store_spec import open_spec  # noqa: E402

PERSONAS = ["p1", "p2", "p3", ""]


def face_ids(faces: int) -> list[str]:
    return [f"face{i:05d}" for i in range(faces)]


def persona_of(face: int, version: int) -> str:
    """Versions move faces between personas, as a retrain does."""
    return PERSONAS[(face + version) % len(PERSONAS)]


def main() -> int:
    spec, faces, batch = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    store = open_spec(spec)
    ids = face_ids(faces)
    for version in itertools.count(2):
        for index, start in enumerate(range(0, faces, batch)):
            chunk = range(start, min(start + batch, faces))
            store.put_prediction_columns(ids[start:chunk.stop], [persona_of(i, version) for i in chunk],
                                         np.full(len(chunk), version / 1000, np.float32), version, float(version))
            print(f"ack {version} {index}", flush=True)
            if not sys.stdin.readline():
                return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
