"""Store records to protobuf messages (one place, used by every service)."""
from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from visage.store.records import (
    Erasure,
    EventRecord,
    FaceRecord,
    ImageRecord,
    LabelRecord,
    ModelVersionRecord,
    PersonaRecord,
    PredictionRecord,
    TrainingJobRecord,
)
from visage.v1 import query_pb2
from visage.v1 import resources_pb2 as pb


def timestamp(seconds: float) -> Timestamp:
    ts = Timestamp()
    if seconds:
        ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def persona(record: PersonaRecord, labelled: int = 0, predicted: int = 0, cover_face_id: str = "") -> pb.Persona:
    return pb.Persona(
        persona_id=record.persona_id, display_name=record.display_name,
        labelled_face_count=labelled, predicted_face_count=predicted, cover_face_id=cover_face_id,
        create_time=timestamp(record.create_time), update_time=timestamp(record.update_time),
    )


def image(record: ImageRecord) -> pb.Image:
    return pb.Image(
        image_id=record.image_id, filename=record.filename, content_type=record.content_type,
        width=record.width, height=record.height, size_bytes=record.size_bytes,
        face_count=record.face_count, status=record.status, create_time=timestamp(record.create_time),
    )


def box(ltrb: tuple[int, int, int, int]) -> pb.BoundingBox:
    left, top, right, bottom = ltrb
    return pb.BoundingBox(left=left, top=top, right=right, bottom=bottom)


def landmarks(points: list[tuple[float, float]]) -> list[pb.Point]:
    return [pb.Point(x=x, y=y) for x, y in points]


def label(record: LabelRecord) -> pb.Label:
    return pb.Label(face_id=record.face_id, persona_id=record.persona_id, verdict=record.verdict,
                    labelled_by=record.labelled_by, create_time=timestamp(record.create_time))


def prediction(record: PredictionRecord) -> pb.Prediction:
    return pb.Prediction(face_id=record.face_id, persona_id=record.persona_id, confidence=record.confidence,
                         model_version=record.model_version, create_time=timestamp(record.create_time))


def face(record: FaceRecord, labels: list[LabelRecord] = (), prediction_record: PredictionRecord | None = None,
         include_embedding: bool = False) -> pb.Face:
    message = pb.Face(
        face_id=record.face_id, image_id=record.image_id, box=box(record.box),
        landmarks=landmarks(record.landmarks), labels=[label(item) for item in labels],
    )
    if include_embedding:
        message.embedding.extend(record.embedding.tolist())
    if record.drawn_by:
        message.drawn_by = record.drawn_by
        message.draw_time.CopyFrom(timestamp(record.create_time))
    if prediction_record is not None:
        message.prediction.CopyFrom(prediction(prediction_record))
    return message


def metrics(data: dict) -> pb.ModelMetrics:
    return pb.ModelMetrics(
        accuracy=data.get("accuracy", 0.0),
        unknown_rejection_rate=data.get("unknown_rejection_rate", 0.0),
        per_persona=[pb.PersonaMetrics(**item) for item in data.get("per_persona", [])],
        labelled_faces=data.get("labelled_faces", 0), personas=data.get("personas", 0),
        evaluation_method=data.get("evaluation_method", ""),
        evaluated_faces=data.get("evaluated_faces", 0), evaluated_unknowns=data.get("evaluated_unknowns", 0),
    )


def model_version(record: ModelVersionRecord) -> pb.ModelVersion:
    lineage = record.lineage
    return pb.ModelVersion(
        version=record.version, state=record.state, metrics=metrics(record.metrics),
        lineage=pb.Lineage(
            event_cursor=lineage.get("event_cursor", ""), label_count=lineage.get("label_count", 0),
            label_set_sha256=lineage.get("label_set_sha256", ""),
            training_seconds=lineage.get("training_seconds", 0.0),
            library_versions=lineage.get("library_versions", {}),
            parent_version=lineage.get("parent_version", 0),
        ),
        unknown_threshold=record.unknown_threshold, algorithm=record.algorithm,
        persona_ids=record.persona_ids, create_time=timestamp(record.create_time),
        activate_time=timestamp(record.activate_time), gate_reason=record.gate_reason,
    )


def training_job(record: TrainingJobRecord) -> pb.TrainingJob:
    return pb.TrainingJob(
        job_id=record.job_id, trigger=record.trigger, phase=record.phase, faces_read=record.faces_read,
        done=record.done, total=record.total, metrics=metrics(record.metrics),
        model_version=record.model_version, activated=record.activated, message=record.message,
        create_time=timestamp(record.create_time), update_time=timestamp(record.update_time),
    )


def event(record: EventRecord) -> pb.Event:
    return pb.Event(cursor=record.cursor, type=record.type, subject=record.subject,
                    attributes=record.attributes, create_time=timestamp(record.create_time))


def erasure(record: Erasure) -> query_pb2.Erasure:
    return query_pb2.Erasure(image_ids=record.image_ids, face_ids=record.face_ids, persona_ids=record.persona_ids,
                             withdrawn_versions=record.withdrawn_versions)
