"""`visage classify` and `visage reclassify` against a running classifier."""
from __future__ import annotations

from tests.classifier.conftest import activate_model, personas_for, put_faces
from tests.classifier.test_reclassify import noisy_copies
from visage.cli import main


def test_classify_prints_a_table_of_named_faces(classifier, sqlite_store, crop_embeddings, faces_dir, capsys):
    ids = personas_for(sqlite_store, crop_embeddings)
    version = activate_model(sqlite_store, {ids[n]: rows for n, rows in crop_embeddings.items()})
    classifier.classifier.models.refresh()
    assert main(["classify", str(faces_dir / "scenes/bbt2.jpg"), "--address", f"127.0.0.1:{classifier.port}"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"model version {version}: 2 face(s)"
    assert [line.split()[2] for line in lines[2:]] == ["leonard", "sheldon"]


def test_classify_reports_bad_files_and_bad_images(classifier, tmp_path, capsys):
    address = ["--address", f"127.0.0.1:{classifier.port}"]
    assert main(["classify", str(tmp_path / "missing.jpg"), *address]) == 2
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"no image here")
    assert main(["classify", str(junk), *address]) == 1
    assert "INVALID_ARGUMENT" in capsys.readouterr().err


def test_reclassify_shows_progress_until_done(classifier, sqlite_store, crop_embeddings, capsys):
    ids = personas_for(sqlite_store, crop_embeddings)
    put_faces(sqlite_store, noisy_copies(crop_embeddings, 3000)[0])
    activate_model(sqlite_store, {ids[n]: rows for n, rows in crop_embeddings.items()})
    assert main(["reclassify", "--address", f"127.0.0.1:{classifier.port}"]) == 0
    captured = capsys.readouterr()
    assert "3000 faces re-classified" in captured.out
    assert "re-classifying (version 1)" in captured.err  # the tqdm bar
