"""Trainer test helpers: dlib embeddings of the shared face photos (computed
once per session with dlib directly, so these tests do not depend on the
ingest pipeline), stored as FaceRecords in a SQLite store."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from visage.store.records import FaceRecord, ImageRecord, LabelRecord
from visage.v1 import resources_pb2 as pb


@dataclass(frozen=True)
class Photo:
    group: str  # "bbt", "presidents" or "noise"
    person: str  # the folder name ("" for noise)
    path: Path
    embedding: np.ndarray


def dlib_models():
    import dlib
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import face_recognition_models as models
    return (dlib.get_frontal_face_detector(),
            dlib.shape_predictor(models.pose_predictor_five_point_model_location()),
            dlib.face_recognition_model_v1(models.face_recognition_model_location()))


def embed(path: Path, models) -> np.ndarray:
    """Embedding of the largest face; a tight crop with no detection is taken whole."""
    import dlib
    detector, shape_predictor, encoder = models
    rgb = np.asarray(Image.open(path).convert("RGB"))
    boxes = list(detector(rgb, 1))
    box = max(boxes, key=lambda b: b.area()) if boxes else dlib.rectangle(0, 0, rgb.shape[1] - 1, rgb.shape[0] - 1)
    return np.asarray(encoder.compute_face_descriptor(rgb, shape_predictor(rgb, box)), dtype=np.float32)


def store_photos(store, photos: list[Photo]) -> dict[Path, str]:
    """One image + one face per photo; returns face id by photo path."""
    face_ids = {}
    for number, photo in enumerate(photos):
        image_id = f"{number:064x}"
        face = FaceRecord(face_id=f"{image_id}-0", image_id=image_id, index=0, box=(0, 0, 150, 150),
                          landmarks=[], embedding=photo.embedding)
        store.put_image(ImageRecord(image_id, photo.path.name, "image/png", 150, 150, 1, 1,
                                    pb.IMAGE_STATUS_FACES_FOUND), b"", [face])
        face_ids[photo.path] = face.face_id
    return face_ids


def held_out(photo: Photo) -> bool:
    """The last photo of each person is left unlabelled (for prediction checks)."""
    return photo.path.stem.endswith("1") if photo.group == "bbt" else photo.path.stem.endswith("2")


@dataclass
class LabelledWorld:
    store: object
    photos: list[Photo]
    face_ids: dict[Path, str]
    personas: dict[str, str]  # person name -> persona id

    def label_training_faces(self) -> None:
        for photo in self.photos:
            if photo.group != "noise" and not held_out(photo):
                self.store.put_label(LabelRecord(self.face_ids[photo.path], self.personas[photo.person],
                                                 pb.VERDICT_BELONGS))
