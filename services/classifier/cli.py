"""`visage classify IMAGE` and `visage reclassify`: the ClassifyService from a shell."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from tqdm import tqdm

from visage.config import Config
from visage.v1 import classify_pb2, classify_pb2_grpc


def register(subparsers: argparse._SubParsersAction) -> None:
    default_address = _default_address()
    classify = subparsers.add_parser("classify", help="name the faces in an image with the active model")
    classify.add_argument("image", type=Path, help="image file (JPEG, PNG, WebP, BMP, GIF)")
    classify.add_argument("--address", default=default_address, help=f"classifier address (default {default_address})")
    classify.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the answer")
    classify.set_defaults(run=run_classify)

    reclassify = subparsers.add_parser("reclassify", help="re-classify every unlabelled face (or join the running run)")
    reclassify.add_argument("--address", default=default_address, help=f"classifier address (default {default_address})")
    reclassify.set_defaults(run=run_reclassify)


def _default_address() -> str:
    config = Config.from_env()
    return f"{config.host}:{config.ports.classifier}"


def face_table(response: classify_pb2.ClassifyResponse) -> str:
    """One line per face, left to right: box, name (or unknown), confidence."""
    lines = [f"model version {response.model_version or 'none (no model active yet)'}: "
             f"{len(response.faces)} face(s)"]
    if response.faces:
        lines.append(f"{'#':>2}  {'box (left,top,right,bottom)':<28}  {'name':<24}  {'confidence':>10}  "
                     "(similarity to the persona, 1 - distance/1.2; for unknown: 1 - similarity to the nearest)")
    for number, face in enumerate(sorted(response.faces, key=lambda face: face.box.left), start=1):
        box = f"{face.box.left},{face.box.top},{face.box.right},{face.box.bottom}"
        name = face.display_name if face.persona_id else "unknown"
        lines.append(f"{number:>2}  {box:<28}  {name[:24]:<24}  {face.confidence:>10.3f}")
    return "\n".join(lines)


def run_classify(args: argparse.Namespace) -> int:
    try:
        content = args.image.read_bytes()
    except OSError as error:
        print(f"cannot read {args.image}: {error.strerror}", file=sys.stderr)
        return 2
    with grpc.insecure_channel(args.address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]) as channel:
        try:
            response = classify_pb2_grpc.ClassifyServiceStub(channel).Classify(
                classify_pb2.ClassifyRequest(content=content), timeout=args.timeout)
        except grpc.RpcError as error:
            print(f"classify failed: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    print(face_table(response))
    return 0


def run_reclassify(args: argparse.Namespace) -> int:
    with grpc.insecure_channel(args.address) as channel:
        stub = classify_pb2_grpc.ClassifyServiceStub(channel)
        last = None
        try:
            with tqdm(unit="face", unit_scale=True, desc="re-classifying") as bar:
                for progress in stub.Reclassify(classify_pb2.ReclassifyRequest()):
                    if last is not None and progress.model_version != last.model_version:
                        bar.reset()  # a newer version superseded the run we joined
                    bar.set_description(f"re-classifying (version {progress.model_version})")
                    bar.total = progress.total
                    bar.update(progress.done - bar.n)
                    last = progress
        except grpc.RpcError as error:
            print(f"reclassify failed: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    state = classify_pb2.ReclassifyState.Name(last.state) if last else "no answer"
    print(f"{state}: {last.message if last else ''}")
    nothing_to_do = classify_pb2.RECLASSIFY_STATE_NO_MODEL
    return 0 if last is not None and last.state in (classify_pb2.RECLASSIFY_STATE_SUCCEEDED, nothing_to_do) else 1
