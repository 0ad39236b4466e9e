"""QueryService.Backup and `visage backup` / `visage restore`, on both stores: an operator (or
the local key) takes the archive over gRPC with progress; a labeller may not; the CLI writes it
encrypted (owner-only file) and restores it into an empty store, after which every read RPC of
the query service answers as the source's did; a tampered file is refused and writes nothing."""
from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import grpc
import pytest

from visage import cli
from visage.config import Config
from visage.store import archive
from visage.store.sqlite import SqliteStore
from visage.v1 import query_pb2, query_pb2_grpc
from visage_query.server import start

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "store"))
from archive_scene import fill, snapshot  # noqa: E402


def read_answers(stub) -> dict:
    """Every read RPC of the query service, over everything the store holds."""
    personas = stub.ListPersonas(query_pb2.ListPersonasRequest(page_size=500, include_hidden=True)).personas
    images = stub.ListImages(query_pb2.ListImagesRequest(page_size=500)).images
    answers = {"personas": personas, "images": images,
               "unknown": stub.ListUnknownFaces(query_pb2.ListUnknownFacesRequest(page_size=500)).faces}
    for persona in personas:
        answers[persona.persona_id] = stub.GetPersona(query_pb2.GetPersonaRequest(persona_id=persona.persona_id))
        for kind in (query_pb2.FACE_KIND_LABELLED, query_pb2.FACE_KIND_PREDICTED, query_pb2.FACE_KIND_REJECTED):
            answers[persona.persona_id, kind] = stub.ListPersonaFaces(query_pb2.ListPersonaFacesRequest(
                persona_id=persona.persona_id, kind=kind, page_size=500))
    for image in images:
        got = stub.GetImage(query_pb2.GetImageRequest(image_id=image.image_id))
        answers[image.image_id] = got
        answers[image.image_id, "content"] = stub.GetImageContent(
            query_pb2.GetImageContentRequest(image_id=image.image_id)).data
        for face in got.faces:
            answers[face.face_id] = stub.GetFace(query_pb2.GetFaceRequest(face_id=face.face_id,
                                                                          include_embedding=True))
            answers[face.face_id, "crop"] = stub.GetFaceCrop(query_pb2.GetFaceCropRequest(face_id=face.face_id)).data
    return answers


@pytest.fixture
def filled(store, faces_dir):
    fill(store, faces_dir)
    return store


def test_an_operator_takes_a_backup_over_grpc_with_progress(filled, stub, issue_token, tmp_path, monkeypatch):
    monkeypatch.setattr(archive, "IMAGE_PAGE", 5)  # a page of images at a time: progress after each
    as_operator = [("authorization", f"Bearer {issue_token('operator', 'olga')}")]
    chunks = list(stub.Backup(query_pb2.BackupRequest(), metadata=as_operator))
    assert chunks[-1].phase == "done" and chunks[-1].faces_done == chunks[-1].faces_total == filled.count_faces()
    done = [c.faces_done for c in chunks]
    assert done == sorted(done) and done[0] == 0 and len(set(done)) >= 5  # progress moved while it streamed
    target = SqliteStore(tmp_path / "target.db")
    target.migrate()
    archive.restore(target, lambda: io.BytesIO(b"".join(c.data for c in chunks)))
    assert snapshot(target) == snapshot(filled)

    as_labeller = [("authorization", f"Bearer {issue_token('labeller', 'lars')}")]
    with pytest.raises(grpc.RpcError) as refused:
        list(stub.Backup(query_pb2.BackupRequest(), metadata=as_labeller))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_visage_backup_and_restore_give_the_same_answers_to_every_read(filled, query_service, stub, tmp_path,
                                                                       monkeypatch, capsys):
    output, key = tmp_path / "site.vbk", tmp_path / "keys" / "backup.key"
    address = f"127.0.0.1:{query_service.port}"
    assert cli.main(["backup", "--address", address, "-o", str(output), "--key-file", str(key)]) == 0
    assert output.read_bytes().startswith(archive.ENCRYPTED_MAGIC)
    assert (output.stat().st_mode & 0o777) == 0o600 and (key.stat().st_mode & 0o777) == 0o600
    assert "made a new backup key" in capsys.readouterr().err

    # A tampered copy: refused with a clear message, the store stays empty.
    restored_dir = tmp_path / "restored"
    monkeypatch.setenv("VISAGE_STORE", "sqlite")
    monkeypatch.setenv("VISAGE_DATA_DIR", str(restored_dir))
    monkeypatch.setenv("VISAGE_BACKUP_KEY_FILE", str(key))
    tampered = tmp_path / "tampered.vbk"
    data = bytearray(output.read_bytes())
    data[len(data) // 3] ^= 0x40
    tampered.write_bytes(bytes(data))
    assert cli.main(["restore", str(tampered)]) == 1
    assert "altered or damaged" in capsys.readouterr().err
    restored = SqliteStore(Config.from_env().sqlite_path)
    assert archive.is_empty(restored) and restored.read_events("", 1) == []

    assert cli.main(["restore", str(output)]) == 0
    assert "restored into the sqlite store" in capsys.readouterr().out
    service = start(Config.from_env(), restored, "127.0.0.1:0")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            assert read_answers(query_pb2_grpc.QueryServiceStub(channel)) == read_answers(stub)
    finally:
        service.stop(grace=0)

    # Into a store that now holds data, a different archive is refused unless forced.
    other = tmp_path / "other.vbk"
    assert cli.main(["backup", "--address", address, "-o", str(other), "--key-file", str(key)]) == 0
    assert cli.main(["restore", str(other)]) == 1
    assert "not empty" in capsys.readouterr().err
    assert os.path.exists(other)
