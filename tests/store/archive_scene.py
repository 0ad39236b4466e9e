"""A store filled from the shared photos (../shared/data/faces/bbt) for the backup and restore
tests, and a snapshot of every read the store answers, to compare two stores by."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image

from visage.store import archive, domain
from visage.store.base import Store
from visage.store.records import FaceRecord, ImageRecord, LabelRecord, ModelVersionRecord, PredictionRecord
from visage.v1 import resources_pb2 as pb

PEOPLE = ("amy", "howard", "leonard", "penny", "raj", "sheldon")


def photo_faces(faces_dir: Path, people=PEOPLE, per_person: int = 4) -> list[tuple[str, ImageRecord, bytes, list]]:
    """(person, image, bytes, [face]) for the shared bbt photos: each photo's bytes as stored, its face
    the whole portrait (box and crop), an embedding near its person's (people stay apart)."""
    out = []
    for person in people:
        centre = np.random.default_rng(int(hashlib.sha256(person.encode()).hexdigest()[:8], 16)).standard_normal(128)
        for path in sorted((faces_dir / "bbt" / person).glob("*.png"))[:per_person]:
            content = path.read_bytes()
            image_id = hashlib.sha256(content).hexdigest()
            picture = Image.open(io.BytesIO(content)).convert("RGB")
            crop = io.BytesIO()
            picture.save(crop, format="JPEG")
            rng = np.random.default_rng(int(image_id[:8], 16))
            embedding = (centre + 0.2 * rng.standard_normal(128)).astype(np.float32)
            embedding /= np.linalg.norm(embedding)
            created = 1_700_000_000.0 + len(out)
            face = FaceRecord(f"{image_id[:32]}-0", image_id, 0, (0, 0, picture.width, picture.height),
                              [(picture.width * 0.3, picture.height * 0.4), (picture.width * 0.7, picture.height * 0.4),
                               (picture.width * 0.5, picture.height * 0.6)], embedding, crop.getvalue(), created)
            image = ImageRecord(image_id, path.name, "image/png", picture.width, picture.height, len(content), 1,
                                pb.IMAGE_STATUS_FACES_FOUND, created)
            out.append((person, image, content, [face]))
    return out


def fill(store: Store, faces_dir: Path) -> dict:
    """Photos, personas (one hidden), BELONGS and NOT_BELONGS labels by two people, verdicts,
    a hidden face, an active version, a rejected one, a job's record and an erasure."""
    photos = photo_faces(faces_dir)
    for _person, image, content, faces in photos:
        assert store.put_image(image, content, faces)
    personas = {person: store.create_persona(person.title()) for person in PEOPLE}
    store.set_hidden("persona", personas["raj"].persona_id, True)
    labelled = []
    for number, (person, _image, _content, faces) in enumerate(photos):
        other = PEOPLE[(PEOPLE.index(person) + 1) % len(PEOPLE)]
        if number % 4 in (0, 1):  # two of each person's four photos labelled
            store.put_label(LabelRecord(faces[0].face_id, personas[person].persona_id, pb.VERDICT_BELONGS,
                                        "alice" if number % 2 else "bob", 1_700_000_100.0 + number))
            labelled.append(faces[0].face_id)
        elif number % 4 == 2:  # the third: predicted, and NOT some other person
            store.put_label(LabelRecord(faces[0].face_id, personas[other].persona_id, pb.VERDICT_NOT_BELONGS,
                                        "carol", 1_700_000_200.0 + number))
            store.put_predictions([PredictionRecord(faces[0].face_id, personas[person].persona_id,
                                                    0.9 - number / 100, 1, 1_700_000_300.0)])
        else:  # the fourth: predicted as the wrong person, or unknown
            store.put_predictions([PredictionRecord(faces[0].face_id, personas[other].persona_id if number % 8 == 3
                                                    else "", 0.4, 1, 1_700_000_300.0)])
    store.set_hidden("face", photos[3][3][0].face_id, True)
    drawn = draw_missed_face(store, faces_dir, personas["penny"].persona_id)
    persona_ids = [p.persona_id for p in personas.values()]
    first = train(store, "first-training")
    assert first is not None and store.active_model_version().version == first
    rejected = store.put_model_version(ModelVersionRecord(0, pb.MODEL_STATE_CANDIDATE, "centroid", 0.6, persona_ids,
                                                          {"accuracy": 0.5}, {}), b"second onnx artifact")
    store.record_gate_decision(rejected.version, pb.MODEL_STATE_REJECTED, "worse than the active version")
    erased = photos[-1][1].image_id  # an unlabelled, predicted photo of the last person
    store.delete_image(erased)
    return {"photos": photos, "personas": personas, "erased": erased, "labelled": labelled, "drawn": drawn}


def draw_missed_face(store: Store, faces_dir: Path, persona_id: str) -> FaceRecord:
    """A photo in which no face was found, and the face "dave" drew on it (AddFace), labelled."""
    [path] = sorted((faces_dir / "bbt" / "penny").glob("*.png"))[4:5]
    content = path.read_bytes()
    image_id = hashlib.sha256(content).hexdigest()
    picture = Image.open(io.BytesIO(content))
    assert store.put_image(ImageRecord(image_id, path.name, "image/png", picture.width, picture.height, len(content),
                                       0, pb.IMAGE_STATUS_NO_FACE, 1_700_000_050.0), content, [])
    embedding = np.random.default_rng(30).standard_normal(128).astype(np.float32)
    face = FaceRecord("", image_id, -1, (5, 5, picture.width - 5, picture.height - 5), [(20.0, 30.0)] * 5,
                      embedding / np.linalg.norm(embedding), b"drawn crop", 1_700_000_060.0, drawn_by="dave")
    return store.add_face(face, persona_id)


def snapshot(store: Store) -> dict:
    """Every read the store answers, in a form two backends can be compared by (event cursors
    are each backend's own: the log is compared by content and order)."""
    personas = store.list_personas()
    persona_ids = [p.persona_id for p in personas]
    images = store.list_images(0, 100_000)
    image_ids = [i.image_id for i in images]
    face_ids = sorted(f.face_id for faces in store.faces_of_images(image_ids).values() for f in faces)

    def face(f):
        return (f.face_id, f.image_id, f.index, tuple(f.box), [tuple(p) for p in f.landmarks],
                np.asarray(f.embedding).tobytes(), bytes(f.crop_jpeg), f.create_time, f.drawn_by)

    unknown, after = [], None
    while page := store.list_unknown_faces(after, 3):
        unknown += page
        after = page[-1]
    versions = store.list_model_versions()
    active = store.active_model_version()
    return {
        "personas": personas,
        "persona_reads": [store.get_persona(p) for p in persona_ids],
        "images": images, "count_images": store.count_images(),
        "image_reads": [store.get_image(i) for i in image_ids],
        "contents": [hashlib.sha256(store.get_image_content(i)).hexdigest() for i in image_ids],
        "faces_of_image": {i: [face(f) for f in store.faces_of_image(i)] for i in image_ids},
        "faces_of_images": {i: [face(f) for f in fs] for i, fs in store.faces_of_images(image_ids).items()},
        "faces": [face(f) for f in store.get_faces(face_ids)], "count_faces": store.count_faces(),
        "embeddings": sorted((fid, row.tobytes()) for ids, matrix in store.iter_embeddings()
                             for fid, row in zip(ids, matrix)),
        "labels_of_faces": {f: sorted(map(repr, store.labels_of_face(f))) for f in face_ids},
        "labels_of_persona": {(p, v): store.labels_of_persona(p, v) for p in persona_ids
                              for v in (pb.VERDICT_BELONGS, pb.VERDICT_NOT_BELONGS)},
        "count_labels": [store.count_labels(persona_ids, v) for v in (pb.VERDICT_BELONGS, pb.VERDICT_NOT_BELONGS)],
        "labels": sorted(map(repr, store.iter_labels())),
        "predictions": store.get_predictions(face_ids),
        "predictions_of_persona": {p: store.predictions_of_persona(p) for p in persona_ids},
        "count_predictions": store.count_predictions(persona_ids),
        "all_predictions": sorted(map(repr, store.iter_predictions())),
        "unknown": unknown,
        "hidden": {kind: store.hidden_ids(kind) for kind in ("face", "persona")},
        "versions": versions, "active": active,
        "artifacts": {v.version: store.get_model_artifact(v.version) for v in versions},
        "jobs": store.list_training_jobs(1000),
        "events": [(e.type, e.subject, e.attributes) for e in store.read_events("", 100_000)],
        "meta": {key: store.get_meta(key) for key in archive.CARRIED_META_KEYS},
        "ledger": domain.read_ledger(store),
    }


def train(store: Store, job_id: str) -> int | None:
    """One real training job (the trainer's own code): the version it stored, if any."""
    from visage.store.records import TrainingJobRecord
    from visage_trainer.training import JobReporter, TrainerSettings, run_job

    job = TrainingJobRecord(job_id, pb.TRAINING_TRIGGER_MANUAL, pb.TRAINING_PHASE_QUEUED, create_time=1_700_000_400.0)
    reporter = JobReporter(store, job, lambda _job: None)
    run_job(store, reporter, TrainerSettings(), force=True)
    assert reporter.job.phase == pb.TRAINING_PHASE_SUCCEEDED, reporter.job.message
    return reporter.job.model_version or None
