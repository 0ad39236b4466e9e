"""`visage personas ...` and `visage label ...` against a running query service."""
from __future__ import annotations

from visage.cli import main
from visage.loopback import free_port
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
    port = free_port()  # nobody listens on it
    assert main(["personas", "--address", f"127.0.0.1:{port}", "list"]) == 2
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_faces_unknown_and_show_name_the_file_box_and_prediction(query_service, stub, store, add_image,
                                                                activate_model, predict, capsys):
    address = ["--address", f"127.0.0.1:{query_service.port}"]
    first, second = add_image(store, 2)
    penny = stub.CreatePersona(query_pb2.CreatePersonaRequest(persona=pb.Persona(display_name="Penny")))
    version = activate_model(store, [penny.persona_id])
    predict(store, version, (first.face_id, "", 0.7), (second.face_id, penny.persona_id, 0.91))
    filename = store.get_image(first.image_id).filename

    assert main(["faces", *address, "unknown"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split() == ["FACE", "ID", "FILE", "BOX", "PREDICTION"]
    assert rows[1].split() == [first.face_id, filename, "0,20,50,70", "unknown", "(70%)"]
    assert len(rows) == 2  # the face predicted as Penny is not unknown

    assert main(["faces", *address, "show", second.face_id]) == 0
    shown = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert shown["file"] == filename and shown["box"].startswith("10,20,60,70")
    assert shown["prediction"] == "Penny (91%)" and shown["labels"] == "none"

    assert main(["label", *address, second.face_id, penny.persona_id]) == 0
    capsys.readouterr()
    assert main(["faces", *address, "show", second.face_id]) == 0
    shown = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines())
    assert shown["labels"] == f"is Penny ({penny.persona_id})" and shown["prediction"] == "no prediction yet"

    assert main(["faces", *address, "show", "no-such-face"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    assert main(["personas", *address, "create", "penny"]) == 1
    assert "ALREADY_EXISTS" in capsys.readouterr().err
    assert main(["personas", *address, "create", "--force", "penny"]) == 0
