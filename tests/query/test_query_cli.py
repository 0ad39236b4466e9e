"""`visage personas ...` and `visage label ...` against a running query service."""
from __future__ import annotations

from visage.cli import main
from visage.v1 import query_pb2
from visage.v1 import resources_pb2 as pb


def test_persona_commands_and_labels(query_service, stub, store, add_image, capsys):
    address = ["--address", f"127.0.0.1:{query_service.port}"]
    assert main(["personas", *address, "create", "Penny"]) == 0
    persona_id = capsys.readouterr().out.split()[1]
    face = add_image(store, 1)[0]

    assert main(["label", *address, face.face_id, persona_id]) == 0
    assert stub.GetFace(query_pb2.GetFaceRequest(face_id=face.face_id)).labels[0].verdict == pb.VERDICT_BELONGS
    assert main(["label", *address, "--not", face.face_id, persona_id]) == 0
    assert stub.GetFace(query_pb2.GetFaceRequest(face_id=face.face_id)).labels[0].verdict == pb.VERDICT_NOT_BELONGS
    assert main(["label", *address, "--remove", face.face_id, persona_id]) == 0
    assert stub.GetFace(query_pb2.GetFaceRequest(face_id=face.face_id)).labels == []

    assert main(["personas", *address, "rename", persona_id, "Penny H"]) == 0
    capsys.readouterr()
    assert main(["personas", *address, "list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split() == ["ID", "NAME", "LABELLED", "PREDICTED"]
    assert listing[1].split() == [persona_id, "Penny", "H", "0", "0"]

    assert main(["personas", *address, "create", "bad\x07name"]) == 1
    assert "INVALID_ARGUMENT" in capsys.readouterr().err
    assert main(["personas", *address, "delete", persona_id]) == 0
    assert main(["personas", *address, "delete", persona_id]) == 1
    assert f"NOT_FOUND: persona '{persona_id}' not found" in capsys.readouterr().err


def test_unreachable_service_exit_code(capsys):
    import socket
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert main(["personas", "--address", f"127.0.0.1:{port}", "list"]) == 2
    assert "UNAVAILABLE" in capsys.readouterr().err
