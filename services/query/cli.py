"""`visage personas list|create NAME|rename ID NAME|delete ID`,
`visage label FACE_ID PERSONA_ID [--not] [--remove]` and
`visage faces unknown|show FACE_ID`: the catalogue from a
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
from visage_query import backup_cli, privacy_cli

CALL_TIMEOUT_SECONDS = 30
UNREACHABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
COUNT_AT_MOST = 10_000  # unknown faces counted past a list's limit ("50 of more than 10050")


def register(subparsers) -> None:
    personas = subparsers.add_parser("personas", help="list, create, rename or delete personas")
    _address_option(personas)
    actions = personas.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="every persona with its face counts").set_defaults(run=list_personas)
    create = actions.add_parser("create", help="create a persona")
    create.add_argument("name")
    create.add_argument("--force", action="store_true", help="create it even if a persona has this name")
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
    backup_cli.register(subparsers, _address_option, _call)

    face_actions = privacy_cli.resource_actions(
        subparsers, "faces", _address_option, "unknown faces, one face (file, box, prediction), or erase one")
    unknown = face_actions.add_parser("unknown", help="faces nobody is known for, newest first")
    unknown.add_argument("--limit", type=int, default=50, help="at most this many (default 50; 0: all)")
    unknown.set_defaults(run=unknown_faces)
    show = face_actions.add_parser("show", help="one face: file, box, labels and prediction")
    show.add_argument("face_id")
    show.set_defaults(run=show_face)


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
        persona = stub.CreatePersona(query_pb2.CreatePersonaRequest(persona=pb.Persona(display_name=args.name),
                                                                    force=args.force),
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
        erasure = stub.ErasePersona(query_pb2.ErasePersonaRequest(persona_id=args.persona_id,
                                                                  erase_faces=args.erase_faces),
                                    timeout=privacy_cli.ERASE_TIMEOUT_SECONDS)
        print(f"deleted {args.persona_id}{' and erased its faces with their images' if args.erase_faces else ''}")
        privacy_cli.print_erasure(erasure)
    return _call(args, work)


def label_face(args: argparse.Namespace) -> int:
    def work(stub):
        if args.remove:
            stub.UnlabelFace(query_pb2.UnlabelFaceRequest(face_id=args.face_id, persona_id=args.persona_id),
                             timeout=CALL_TIMEOUT_SECONDS)
            print(f"removed the label of face {args.face_id} for {persona_named(stub, args.persona_id)}")
            return
        verdict = pb.VERDICT_NOT_BELONGS if args.not_belongs else pb.VERDICT_BELONGS
        stub.LabelFace(query_pb2.LabelFaceRequest(face_id=args.face_id, persona_id=args.persona_id,
                                                  verdict=verdict),
                       timeout=CALL_TIMEOUT_SECONDS)
        print(f"face {args.face_id} {'is not' if args.not_belongs else 'is'} {persona_named(stub, args.persona_id)}")
    return _call(args, work)


def persona_named(stub, persona_id: str) -> str:
    """'Penny (ID)': people read the name, commands take the id."""
    return f"{FaceDescriber(stub).name_of(persona_id)} ({persona_id})"


class FaceDescriber:
    """Face messages as one line of text, with image file and persona names
    looked up once each."""

    def __init__(self, stub):
        self.stub = stub
        self._files: dict[str, str] = {}
        self._names: dict[str, str] = {}

    def file_of(self, image_id: str) -> str:
        if image_id not in self._files:
            image = self.stub.GetImage(query_pb2.GetImageRequest(image_id=image_id), timeout=CALL_TIMEOUT_SECONDS)
            self._files[image_id] = image.image.filename or image_id
        return self._files[image_id]

    def name_of(self, persona_id: str) -> str:
        if persona_id not in self._names:
            try:
                persona = self.stub.GetPersona(query_pb2.GetPersonaRequest(persona_id=persona_id),
                                               timeout=CALL_TIMEOUT_SECONDS)
                self._names[persona_id] = persona.display_name
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
                self._names[persona_id] = f"(deleted {persona_id})"
        return self._names[persona_id]

    @staticmethod
    def box(face: pb.Face) -> str:
        return f"{face.box.left},{face.box.top},{face.box.right},{face.box.bottom}"

    def prediction(self, face: pb.Face) -> str:
        if not face.HasField("prediction"):
            return "no prediction yet"
        if not face.prediction.persona_id:
            return f"unknown ({face.prediction.confidence:.0%})"
        return f"{self.name_of(face.prediction.persona_id)} ({face.prediction.confidence:.0%})"

    def labels(self, face: pb.Face) -> str:
        verdicts = {pb.VERDICT_BELONGS: "is", pb.VERDICT_NOT_BELONGS: "is not"}
        return "; ".join(f"{verdicts.get(label.verdict, '?')} {self.name_of(label.persona_id)} ({label.persona_id})"
                         for label in face.labels) or "none"


def unknown_faces(args: argparse.Namespace) -> int:
    def work(stub):
        describe, faces, total, token = FaceDescriber(stub), [], 0, ""
        limit = args.limit if args.limit > 0 else None
        # The faces beyond the limit are counted (up to COUNT_AT_MOST), not described.
        while limit is None or total < limit + COUNT_AT_MOST:
            response = stub.ListUnknownFaces(query_pb2.ListUnknownFacesRequest(page_size=500, page_token=token),
                                             timeout=CALL_TIMEOUT_SECONDS)
            total += len(response.faces)
            faces += response.faces[:max(limit - len(faces), 0)] if limit is not None else response.faces
            if not (token := response.next_page_token):
                break
        if not faces:
            print("no unknown faces")
            return
        rows = [("FACE ID", "FILE", "BOX", "PREDICTION")] + [
            (face.face_id, describe.file_of(face.image_id), describe.box(face), describe.prediction(face))
            for face in faces]
        widths = [max(len(row[column]) for row in rows) for column in range(3)]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
        if total > len(faces):  # on stderr: a pipe (awk, wc) reads the table only
            sys.stdout.flush()
            print(f"{len(faces)} of {'more than ' if token else ''}{total} unknown faces; --limit 0 for all",
                  file=sys.stderr)
    return _call(args, work)


def show_face(args: argparse.Namespace) -> int:
    def work(stub):
        describe = FaceDescriber(stub)
        face = stub.GetFace(query_pb2.GetFaceRequest(face_id=args.face_id), timeout=CALL_TIMEOUT_SECONDS)
        for name, value in [("face", face.face_id), ("file", describe.file_of(face.image_id)),
                            ("image", face.image_id), ("box", describe.box(face) + " (left,top,right,bottom)"),
                            ("labels", describe.labels(face)), ("prediction", describe.prediction(face)),
                            ("hidden", "yes" if face.hidden else "no")]:
            print(f"{name:<11}{value}")
    return _call(args, work)
