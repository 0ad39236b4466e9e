"""`visage images delete`, `visage faces delete`, `visage personas delete --erase-faces`
and `visage export` against a running query service, on both stores."""
from __future__ import annotations

import json
import zipfile

from visage.cli import main
from visage.store.records import LabelRecord
from visage.v1 import resources_pb2 as pb


def test_erase_commands_and_export(query_service, store, add_image, tmp_path, capsys):
    address = ["--address", f"127.0.0.1:{query_service.port}"]
    persona = store.create_persona("Amy")
    first, second = add_image(store, 2), add_image(store, 1)
    store.put_label(LabelRecord(first[0].face_id, persona.persona_id, pb.VERDICT_BELONGS))
    store.put_label(LabelRecord(second[0].face_id, persona.persona_id, pb.VERDICT_BELONGS))

    output = tmp_path / "amy.zip"
    assert main(["export", *address, persona.persona_id, "-o", str(output)]) == 0
    archive = zipfile.ZipFile(output)
    assert json.loads(archive.read("persona.json"))["display_name"] == "Amy"
    assert archive.read(f"crops/{first[0].face_id}.jpg") == first[0].crop_jpeg
    assert archive.read(f"images/{first[0].image_id}.jpg") == store.get_image_content(first[0].image_id)
    assert not (tmp_path / "amy.zip.partial").exists()

    assert main(["faces", *address, "delete", first[1].face_id]) == 0
    assert "erased 0 image(s), 1 face(s)" in capsys.readouterr().out
    assert store.get_face(first[1].face_id) is None and store.get_image(first[0].image_id).face_count == 1
    assert main(["images", *address, "delete", first[0].image_id]) == 0
    assert store.get_image(first[0].image_id) is None and store.get_face(first[0].face_id) is None
    assert main(["images", *address, "delete", first[0].image_id]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err

    assert main(["personas", *address, "delete", "--erase-faces", persona.persona_id]) == 0
    assert "erased 1 image(s), 1 face(s)" in capsys.readouterr().out
    assert store.get_image(second[0].image_id) is None and store.get_persona(persona.persona_id) is None
    assert main(["export", *address, persona.persona_id, "-o", str(tmp_path / "gone.zip")]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err and not (tmp_path / "gone.zip").exists()
