"""`visage faces add IMAGE_ID --box LEFT,TOP,RIGHT,BOTTOM [--persona ID]`: a face the detector
missed, drawn on a stored image (IngestService.AddFace). It joins the `visage faces` command
(visage_query.cli makes it; this module is registered after it). Exit code 1 when the service
refuses the box (no face there, a face stored there already, ...), 2 when it cannot be reached."""
from __future__ import annotations

import argparse
import sys

import grpc

from visage.auth import client as auth_client
from visage.config import Config
from visage.v1 import ingest_pb2, ingest_pb2_grpc
from visage.v1 import resources_pb2 as pb

CALL_TIMEOUT_SECONDS = 60  # the pipeline looks for the face in the box: a worker may be busy with a bulk ingest
UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def register(subparsers) -> None:
    add = _face_actions(subparsers).add_parser(
        "add", help="add a face the detector missed: a box drawn on a stored image (the ingest service; "
                    "through the gateway: visage faces --address HOST:8080 add ...)")
    add.add_argument("image_id")
    add.add_argument("--box", required=True, type=parse_box, metavar="LEFT,TOP,RIGHT,BOTTOM",
                     help="around the face, in the stored image's pixels")
    add.add_argument("--persona", default="", metavar="PERSONA_ID", help="label the new face as this persona")
    add.set_defaults(run=add_face)


def _face_actions(subparsers):
    """The actions of `visage faces` (made by visage_query.cli; made here when it is not installed)."""
    parser = subparsers.choices.get("faces")
    if parser is None:
        parser = subparsers.add_parser("faces", help="faces")
        parser.add_argument("--address", default=None)
        parser.set_defaults(resource_actions=parser.add_subparsers(dest="action", required=True))
    return parser.get_default("resource_actions")


def parse_box(text: str) -> pb.BoundingBox:
    try:
        left, top, right, bottom = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LEFT,TOP,RIGHT,BOTTOM (four whole numbers)") from None
    return pb.BoundingBox(left=left, top=top, right=right, bottom=bottom)


def add_face(args: argparse.Namespace) -> int:
    config = Config.from_env()
    address = args.address or f"{config.host}:{config.ports.ingest}"
    request = ingest_pb2.AddFaceRequest(image_id=args.image_id, box=args.box, persona_id=args.persona)
    with auth_client.channel(address) as channel:
        try:
            face = ingest_pb2_grpc.IngestServiceStub(channel).AddFace(request, timeout=CALL_TIMEOUT_SECONDS).face
        except grpc.RpcError as error:
            print(f"ingest service at {address}: {error.code().name}: {error.details()}", file=sys.stderr)
            return 2 if error.code() in UNREACHABLE else 1
    box = face.box
    print(f"face {face.face_id} added at {box.left},{box.top},{box.right},{box.bottom} (left,top,right,bottom), "
          f"drawn by {face.drawn_by}" + "".join(f"; labelled {label.persona_id}" for label in face.labels))
    return 0
