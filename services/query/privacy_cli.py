"""`visage images delete ID`, `visage faces delete ID` (erasure) and
`visage export PERSONA_ID [-o FILE]` (a subject-access zip, with a progress bar)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tqdm import tqdm

from visage.v1 import query_pb2

ERASE_TIMEOUT_SECONDS = 300  # a persona with thousands of faces erases in seconds; leave room on Cassandra


def resource_actions(subparsers, resource: str, address_option, help: str):
    """The actions of `visage RESOURCE ...`, made once: `visage faces` has both
    `delete` (here) and `unknown|show` (visage_query.cli)."""
    parser = subparsers.choices.get(resource)
    if parser is None:
        parser = subparsers.add_parser(resource, help=help)
        address_option(parser)
        parser.set_defaults(resource_actions=parser.add_subparsers(dest="action", required=True))
    return parser.get_default("resource_actions")


def register(subparsers, address_option, call) -> None:
    for resource, field, rpc in (("images", "image_id", "DeleteImage"), ("faces", "face_id", "DeleteFace")):
        actions = resource_actions(subparsers, resource, address_option, f"erase {resource} completely (privacy)")
        delete = actions.add_parser("delete", help=f"erase one {resource[:-1]}: bytes, crops, embeddings, "
                                                   "labels, predictions; retires models trained on its labels")
        delete.add_argument(field)
        delete.set_defaults(run=lambda args, field=field, rpc=rpc: call(args, lambda stub: erase(stub, args, field,
                                                                                                  rpc)))
    export = subparsers.add_parser("export", help="write a persona's labels, crops and images as a zip")
    address_option(export)
    export.add_argument("persona_id")
    export.add_argument("-o", "--output", type=Path, default=None, help="zip to write (default PERSONA_ID.zip)")
    export.set_defaults(run=lambda args: call(args, lambda stub: export_zip(stub, args)))


def erase(stub, args: argparse.Namespace, field: str, rpc: str) -> None:
    request = getattr(query_pb2, f"{rpc}Request")(**{field: getattr(args, field)})
    print_erasure(getattr(stub, rpc)(request, timeout=ERASE_TIMEOUT_SECONDS))


def print_erasure(erasure) -> None:
    print(f"erased {len(erasure.image_ids)} image(s), {len(erasure.face_ids)} face(s); "
          f"withdrew model version(s): {', '.join(map(str, erasure.withdrawn_versions)) or 'none'}")


def export_zip(stub, args: argparse.Namespace) -> None:
    """Streams the zip into a temporary file renamed at the end: a failed export leaves no partial zip."""
    output = args.output or Path(f"{args.persona_id}.zip")
    partial = output.with_name(output.name + ".partial")
    try:
        with partial.open("wb") as file, tqdm(unit="file", desc="export", file=sys.stderr) as progress:
            for chunk in stub.ExportPersona(query_pb2.ExportPersonaRequest(persona_id=args.persona_id)):
                file.write(chunk.data)
                progress.total = chunk.files_total
                progress.update(chunk.files_done - progress.n)
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    print(f"wrote {output}")
