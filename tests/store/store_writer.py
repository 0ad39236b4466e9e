"""A separate writer process for the concurrency and restart tests:
    python store_writer.py SPEC_JSON WRITER_NAME COUNT FACE_ID PERSONA_IDS
appends COUNT events (subject WRITER_NAME, attribute n) and, when FACE_ID is given,
labels that face NOT_BELONGS for each persona in turn; prints "ack N" after each
acknowledged write, so a parent that kills it knows what must have survived."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from store_spec import open_spec  # noqa: E402

from visage.store.records import LabelRecord  # noqa: E402
from visage.v1 import resources_pb2 as pb  # noqa: E402


def main() -> int:
    spec, writer, count, face_id, personas = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), \
        sys.argv[4], [p for p in sys.argv[5].split(",") if p]
    store = open_spec(spec)
    for n in range(count):
        store.append_event(pb.EVENT_TYPE_TRAINING_PROGRESS, writer, {"n": str(n)})
        if face_id and personas:
            store.put_label(LabelRecord(face_id, personas[n % len(personas)], pb.VERDICT_NOT_BELONGS, writer))
        print(f"ack {n}", flush=True)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
