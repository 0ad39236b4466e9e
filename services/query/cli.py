"""`visage personas list|create NAME|rename ID NAME|delete ID` and
`visage label FACE_ID PERSONA_ID [--not] [--remove]`: the catalogue from a
terminal, through the query service (so its checks apply). Exit code 1 when
the service refuses the request, 2 when it cannot be reached."""
from __future__ import annotations

import argparse
import sys

import grpc

from visage.auth import client as auth_client
from visage.config import Config
from visage.v1 import query_pb2, query_pb2_grpc
from visage.v1 import resources_pb2 as pb
from visage_query import privacy_cli

CALL_TIMEOUT_SECONDS = 30
UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def register(subparsers) -> None:
    personas = subparsers.add_parser("personas", help="list, create, rename or delete personas")
    _address_option(personas)
    actions = personas.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every persona with its face counts").set_defaults(run=list_personas)
    create = actions.add_parser("create", help="create a persona")
    create.add_argument("name")
    create.set_defaults(run=create_persona)
    rename = actions.add_parser("rename", help="rename a persona")
    rename.add_argument("persona_id")
    rename.add_argument("name")
    rename.set_defaults(run=rename_persona)
    delete = actions.add_parser("delete", help="delete a persona and its labels (its faces stay, as unknown)")
    delete.add_argument("persona_id")
    delete.add_argument("--erase-faces", action="store_true",
                        help="also erase the faces labelled as this persona, with their whole images")
    delete.set_defaults(run=delete_persona)

    label = subparsers.add_parser("label", help="label a face as (not) belonging to a persona")
    _address_option(label)
    label.add_argument("face_id")
    label.add_argument("persona_id")
    verdict = label.add_mutually_exclusive_group()
    verdict.add_argument("--not", dest="not_belongs", action="store_true", help="the face is NOT this persona")
    verdict.add_argument("--remove", action="store_true", help="remove the face's label for this persona")
    label.set_defaults(run=label_face)
    privacy_cli.register(subparsers, _address_option, _call)


def _address_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default=None,
                        help="query service host:port (default: VISAGE_HOST:VISAGE_QUERY_PORT)")


def _call(args: argparse.Namespace, work) -> int:
    """Runs work(stub) and turns a refused or failed call into a message and an exit code."""
    config = Config.from_env()
    address = args.address or f"{config.host}:{config.ports.query}"
    with auth_client.channel(address) as channel:
        try:
            work(query_pb2_grpc.QueryServiceStub(channel))
        except grpc.RpcError as error:
            print(f"query service at {address}: {error.code().name}: {error.details()}", file=sys.stderr)
            return 2 if error.code() in UNREACHABLE else 1
    return 0


def persona_table(personas: list[pb.Persona]) -> str:
    header = ("ID", "NAME", "LABELLED", "PREDICTED")
    rows = [header] + [(p.persona_id, p.display_name, str(p.labelled_face_count), str(p.predicted_face_count))
                       for p in personas]
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def list_personas(args: argparse.Namespace) -> int:
    def work(stub):
        personas, token = [], ""
        while True:
            response = stub.ListPersonas(query_pb2.ListPersonasRequest(page_size=500, page_token=token),
                                         timeout=CALL_TIMEOUT_SECONDS)
            personas += response.personas
            if not (token := response.next_page_token):
                break
        print(persona_table(personas) if personas else "no personas yet")
    return _call(args, work)


def create_persona(args: argparse.Namespace) -> int:
    def work(stub):
        persona = stub.CreatePersona(query_pb2.CreatePersonaRequest(persona=pb.Persona(display_name=args.name)),
                                     timeout=CALL_TIMEOUT_SECONDS)
        print(f"created {persona.persona_id} {persona.display_name}")
    return _call(args, work)


def rename_persona(args: argparse.Namespace) -> int:
    def work(stub):
        request = query_pb2.UpdatePersonaRequest(persona=pb.Persona(persona_id=args.persona_id,
                                                                    display_name=args.name))
        persona = stub.UpdatePersona(request, timeout=CALL_TIMEOUT_SECONDS)
        print(f"renamed {persona.persona_id} to {persona.display_name}")
    return _call(args, work)


def delete_persona(args: argparse.Namespace) -> int:
    def work(stub):
        stub.DeletePersona(query_pb2.DeletePersonaRequest(persona_id=args.persona_id, erase_faces=args.erase_faces),
                           timeout=privacy_cli.ERASE_TIMEOUT_SECONDS)
        print(f"deleted {args.persona_id}{' and erased its faces with their images' if args.erase_faces else ''}")
    return _call(args, work)


def label_face(args: argparse.Namespace) -> int:
    def work(stub):
        if args.remove:
            stub.UnlabelFace(query_pb2.UnlabelFaceRequest(face_id=args.face_id, persona_id=args.persona_id),
                             timeout=CALL_TIMEOUT_SECONDS)
            print(f"removed the label of face {args.face_id} for {args.persona_id}")
            return
        verdict = pb.VERDICT_NOT_BELONGS if args.not_belongs else pb.VERDICT_BELONGS
        stub.LabelFace(query_pb2.LabelFaceRequest(face_id=args.face_id, persona_id=args.persona_id,
                                                  verdict=verdict),
                       timeout=CALL_TIMEOUT_SECONDS)
        print(f"face {args.face_id} {'is not' if args.not_belongs else 'is'} {args.persona_id}")
    return _call(args, work)
