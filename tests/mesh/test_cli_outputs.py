"""What the `visage` CLI says, through the real services (issue 28): names beside ids
(`label`, `train`'s per-person metrics), a cut list says so ("3 of 14 unknown faces; --limit 0
for all"), and a legend only where it applies (`models list`'s pin legend)."""
from __future__ import annotations

import dataclasses

import pytest

from tests.waiting import wait_until
from visage.cli import main
from visage.config import Config
from visage.mesh import start_in_process
from visage_trainer.training import TrainerSettings

PIN_LEGEND = "* pinned: activated by hand"


@pytest.fixture
def mesh(config: Config, sqlite_store, monkeypatch):
    """Every service on a free port; the CLI finds them as it finds `make run`'s (VISAGE_*_PORT)."""
    settings = TrainerSettings(debounce_seconds=1.0, poll_seconds=0.1)
    with start_in_process(dataclasses.replace(config, workers=1), sqlite_store, trainer_settings=settings) as services:
        for name, port in services.ports.items():
            monkeypatch.setenv(f"VISAGE_{name.upper()}_PORT", str(port))
        yield sqlite_store


def run(capsys, *argv: str) -> tuple[str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert code == 0, (argv, out, err)
    return out, err


def ingested_faces(out: str) -> dict[str, list[str]]:
    """`visage ingest`'s listing: file name -> its face ids."""
    listing = out.split("\n\n")[0].splitlines()  # then a blank line and the summary
    assert listing[0].split() == ["FACE", "ID", "FILE"], out
    faces: dict[str, list[str]] = {}
    for face_id, file in (line.split() for line in listing[1:]):
        faces.setdefault(file, []).append(face_id)
    return faces


def test_cli_names_people_says_when_a_list_is_cut_and_shows_legends_that_apply(mesh, faces_dir, capsys):
    out, _ = run(capsys, "ingest", str(faces_dir / "bbt/penny"), str(faces_dir / "bbt/leonard"),
                 str(faces_dir / "scenes/bbt1.jpg"))
    faces = ingested_faces(out)
    total = sum(len(ids) for ids in faces.values())
    assert total > 3, out

    out, _ = run(capsys, "models", "list")
    assert "no model versions yet" in out and PIN_LEGEND not in out

    out, err = run(capsys, "faces", "unknown", "--limit", "3")
    assert len(out.splitlines()) == 1 + 3
    assert f"3 of {total} unknown faces; --limit 0 for all" in err
    out, err = run(capsys, "faces", "unknown", "--limit", "0")
    assert len(out.splitlines()) == 1 + total and "of" not in err

    people = {}
    for name in ("Penny", "Leonard"):
        out, _ = run(capsys, "personas", "create", name)
        people[name] = out.split()[1]
    for name, persona_id in people.items():
        for file in (f for f in faces if f.startswith(name.lower())):
            out, _ = run(capsys, "label", faces[file][0], persona_id)
            assert out.strip() == f"face {faces[file][0]} is {name} ({persona_id})"
    some_face = faces["bbt1.jpg"][0]
    out, _ = run(capsys, "label", "--not", some_face, people["Penny"])
    assert out.strip() == f"face {some_face} is not Penny ({people['Penny']})"
    out, _ = run(capsys, "label", "--remove", some_face, people["Penny"])
    assert out.strip() == f"removed the label of face {some_face} for Penny ({people['Penny']})"

    wait_until(lambda: mesh.active_model_version(), "the labels trained an active version")
    out, _ = run(capsys, "models", "list")
    assert "active" in out and PIN_LEGEND not in out and "*" not in out  # nothing pinned: no legend
    run(capsys, "models", "activate", "1")
    out, _ = run(capsys, "models", "list")
    assert "active*" in out and PIN_LEGEND in out
    run(capsys, "models", "release")

    out, _ = run(capsys, "train")
    per_person = [line for line in out.splitlines() if "precision" in line]
    assert len(per_person) == 2, out
    for name, persona_id in people.items():
        assert any(line.split()[:2] == [name, persona_id] for line in per_person), out
