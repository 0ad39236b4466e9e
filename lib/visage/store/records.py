"""Plain records the store reads and writes. Enum-valued fields hold the
protobuf enum numbers from ``visage.v1.resources_pb2`` so there is one
definition of each state, shared by the wire and the store."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

EMBEDDING_DIM = 128


def now() -> float:
    return time.time()


def face_id_of(image_id: str, index: int) -> str:
    """A face's id: its image's and its index in it (stable: the same bytes give the same ids)."""
    return f"{image_id}-{index}"


@dataclass
class PersonaRecord:
    persona_id: str
    display_name: str
    create_time: float = field(default_factory=now)
    update_time: float = field(default_factory=now)


@dataclass
class ImageRecord:
    image_id: str  # hex sha256 of the bytes
    filename: str
    content_type: str
    width: int
    height: int
    size_bytes: int
    face_count: int
    status: int  # resources_pb2.ImageStatus
    create_time: float = field(default_factory=now)


@dataclass
class FaceRecord:
    face_id: str
    image_id: str
    index: int  # position of the face in its image
    box: tuple[int, int, int, int]  # left, top, right, bottom (original pixels)
    landmarks: list[tuple[float, float]]
    embedding: np.ndarray  # float32, shape (128,)
    crop_jpeg: bytes = b""
    create_time: float = field(default_factory=now)  # when found, or drawn
    drawn_by: str = ""  # who drew its box (IngestService.AddFace); "": the detector found it


@dataclass
class LabelRecord:
    face_id: str
    persona_id: str
    verdict: int  # resources_pb2.Verdict
    labelled_by: str = "anonymous"
    create_time: float = field(default_factory=now)


@dataclass
class PredictionRecord:
    face_id: str
    persona_id: str  # "" = unknown
    confidence: float
    model_version: int
    create_time: float = field(default_factory=now)


@dataclass
class ModelVersionRecord:
    version: int
    state: int  # resources_pb2.ModelState
    algorithm: str
    unknown_threshold: float
    persona_ids: list[str]
    metrics: dict  # JSON-able; mirrors resources_pb2.ModelMetrics
    lineage: dict  # JSON-able; mirrors resources_pb2.Lineage
    gate_reason: str = ""
    create_time: float = field(default_factory=now)
    activate_time: float = 0.0


@dataclass
class TrainingJobRecord:
    job_id: str
    trigger: int  # resources_pb2.TrainingTrigger
    phase: int  # resources_pb2.TrainingPhase
    faces_read: int = 0
    done: int = 0
    total: int = 0
    metrics: dict = field(default_factory=dict)
    model_version: int = 0
    activated: bool = False
    message: str = ""
    create_time: float = field(default_factory=now)
    update_time: float = field(default_factory=now)


@dataclass
class EventRecord:
    cursor: str  # opaque, ordered within one backend
    type: int  # resources_pb2.EventType
    subject: str
    attributes: dict[str, str]
    create_time: float
    # Which event this is, however many copies of it the log holds (Cassandra appends an event
    # acknowledged late again): Cassandra, its first copy's position; SQLite "" (the cursor says it).
    origin: str = ""


@dataclass
class Erasure:
    """What one erasure removed, by id only (the ERASED event's content)."""
    image_ids: list[str] = field(default_factory=list)
    face_ids: list[str] = field(default_factory=list)
    persona_ids: list[str] = field(default_factory=list)  # personas whose labels went (or the deleted one)
    withdrawn_versions: list[int] = field(default_factory=list)

    def merge(self, other: "Erasure") -> "Erasure":
        def union(a: list, b: list) -> list:
            return list(dict.fromkeys([*a, *b]))
        return Erasure(union(self.image_ids, other.image_ids), union(self.face_ids, other.face_ids),
                       union(self.persona_ids, other.persona_ids),
                       union(self.withdrawn_versions, other.withdrawn_versions))

    def event_attributes(self) -> dict[str, str]:
        return {"image_ids": ",".join(self.image_ids), "face_ids": ",".join(self.face_ids),
                "persona_ids": ",".join(self.persona_ids),
                "withdrawn_versions": ",".join(str(v) for v in self.withdrawn_versions)}


def embedding_to_bytes(embedding: np.ndarray) -> bytes:
    return np.asarray(embedding, dtype="<f4").reshape(EMBEDDING_DIM).tobytes()


def embedding_from_bytes(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4")


@dataclass
class ShardRecord:
    """One shard of a job shared by replicas (a re-classification: job "reclassify-v7"):
    who holds it until when, how many faces it has done, whether it is finished."""
    job: str
    shard: int
    owner: str
    lease_until: float
    faces: int = 0
    done: bool = False


@dataclass(frozen=True)
class UnknownFaceKey:
    """A face's place in the unknown-faces index: newest image first (image_time
    descending), then image id, then the face's position in its image. A page
    token of ListUnknownFaces is the last key of its page (a cursor, not an offset)."""
    image_time: float
    image_id: str
    index: int
    face_id: str

    def order(self) -> tuple[float, str, int]:
        return -self.image_time, self.image_id, self.index
