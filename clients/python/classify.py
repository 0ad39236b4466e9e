"""Classifies a photo with Visage's typed Python client (visage.client) and prints each
face's name, left to right: "<name or unknown>\t<confidence>".

    VISAGE_TOKEN=... .venv/bin/python clients/python/classify.py [--addr 127.0.0.1:50052] PHOTO

Without --addr each service is reached on this machine at its `make run` port; without
VISAGE_TOKEN the local issuer's key (data/auth of `make run`) signs a token, as for the CLI."""
from __future__ import annotations

import argparse
from pathlib import Path

from visage.client import Client


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("photo", type=Path)
    parser.add_argument("--addr", help="one address for every service (e.g. the Envoy gateway)")
    parser.add_argument("--candidates", type=int, default=1, help="candidate personas per face (1-10)")
    args = parser.parse_args()
    with Client(args.addr, timeout=60) as visage:
        reply = visage.classify(args.photo.read_bytes(), max_candidates=args.candidates)
    for face in sorted(reply.faces, key=lambda face: face.box.left):
        others = ", ".join(f"{c.display_name} {c.confidence:.2f}" for c in face.candidates[1:])
        print(f"{face.display_name or 'unknown'}\t{face.confidence:.3f}" + (f"\t({others})" if others else ""))


if __name__ == "__main__":
    main()
