"""A typed Python client for other systems: one method per RPC of the four services.

    from visage.client import Client
    with Client() as visage:                         # the services of `make run` on this machine
        reply = visage.classify(open("photo.jpg", "rb").read(), max_candidates=3)
    with Client("visage.example.com:8080", token=...) as visage:   # everything through Envoy

- Where: one `target` serves every service (the Envoy gateway routes gRPC by service), or,
  without one, each service at `host` on its port (VISAGE_<SERVICE>_PORT, `make run`'s);
  `addresses` names a service's own address ({"classifier": "10.0.0.5:50052"}).
- Token: `token`, else VISAGE_TOKEN, else a short-lived admin token signed with the local
  issuer's key when this user can read it (visage.auth.client.find_token, as the CLI does);
  sent as `authorization: Bearer …` on every call.
- Retries: a gRPC service config asks the channel to retry UNAVAILABLE (a service restarting,
  a store outage) with exponential backoff (RETRY_POLICY) for every call of the Visage
  services (gRPC retries a stream only until its first answer arrives).
- Deadlines: every call has one (`timeout` seconds, per client; `timeout=` per call overrides;
  streams that follow progress or events default to none).
Errors are grpc.RpcError with the service's status (code(), details())."""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import grpc

from visage.auth.client import channel as token_channel
from visage.config import Ports
from visage.v1 import classify_pb2, classify_pb2_grpc, ingest_pb2, ingest_pb2_grpc
from visage.v1 import query_pb2, query_pb2_grpc, resources_pb2, train_pb2, train_pb2_grpc
from google.api import httpbody_pb2
from google.protobuf import empty_pb2

SERVICES = {"ingest": "visage.v1.IngestService", "classifier": "visage.v1.ClassifyService",
            "trainer": "visage.v1.TrainService", "query": "visage.v1.QueryService"}
DEFAULT_TIMEOUT = 30.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # images up to the services' own limit


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC's retry policy (A6): attempts include the first; the backoff before attempt n is
    random in [0, min(initial * multiplier^(n-1), maximum)]."""
    max_attempts: int = 5
    initial_backoff: float = 0.2
    max_backoff: float = 5.0
    multiplier: float = 2.0
    codes: tuple[str, ...] = ("UNAVAILABLE",)

    def service_config(self) -> str:
        return json.dumps({"methodConfig": [{
            "name": [{"service": name} for name in SERVICES.values()],
            "retryPolicy": {"maxAttempts": self.max_attempts, "initialBackoff": f"{self.initial_backoff}s",
                            "maxBackoff": f"{self.max_backoff}s", "backoffMultiplier": self.multiplier,
                            "retryableStatusCodes": list(self.codes)},
        }]})


RETRY_POLICY = RetryPolicy()


@dataclass
class Client:
    """One channel per distinct address; closes them on close() / leaving `with`."""
    target: str | None = None
    host: str = "127.0.0.1"
    addresses: dict[str, str] = field(default_factory=dict)  # service name -> host:port, beside target/host
    token: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    retry: RetryPolicy = RETRY_POLICY
    _channels: dict[str, grpc.Channel] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        ports = Ports.from_env()
        addresses = {name: self.addresses.get(name) or self.target or f"{self.host}:{getattr(ports, name)}"
                     for name in SERVICES}
        options = [("grpc.enable_retries", 1), ("grpc.service_config", self.retry.service_config()),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES)]
        for address in set(addresses.values()):
            self._channels[address] = token_channel(address, options=options, token=self.token)
        self.ingest = ingest_pb2_grpc.IngestServiceStub(self._channels[addresses["ingest"]])
        self.classifier = classify_pb2_grpc.ClassifyServiceStub(self._channels[addresses["classifier"]])
        self.trainer = train_pb2_grpc.TrainServiceStub(self._channels[addresses["trainer"]])
        self.query = query_pb2_grpc.QueryServiceStub(self._channels[addresses["query"]])

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _t(self, timeout: float | None) -> float:
        return self.timeout if timeout is None else timeout

    # ---- ClassifyService ---------------------------------------------------
    def classify(self, content: bytes, max_candidates: int = 1, *, timeout: float | None = None
                 ) -> classify_pb2.ClassifyResponse:
        return self.classifier.Classify(classify_pb2.ClassifyRequest(content=content, max_candidates=max_candidates),
                                        timeout=self._t(timeout))

    def classify_embeddings(self, embeddings: Iterable[Iterable[float]], max_candidates: int = 1, *,
                            timeout: float | None = None) -> classify_pb2.ClassifyEmbeddingsResponse:
        request = classify_pb2.ClassifyEmbeddingsRequest(
            embeddings=[classify_pb2.Embedding(values=list(map(float, row))) for row in embeddings],
            max_candidates=max_candidates)
        return self.classifier.ClassifyEmbeddings(request, timeout=self._t(timeout))

    def classify_stream(self, items: Iterable[classify_pb2.ClassifyStreamRequest], *, timeout: float | None = None
                        ) -> Iterator[classify_pb2.ClassifyStreamResponse]:
        return self.classifier.ClassifyStream(iter(items), timeout=timeout)

    def reclassify(self, *, timeout: float | None = None) -> Iterator[classify_pb2.ReclassifyProgress]:
        return self.classifier.Reclassify(classify_pb2.ReclassifyRequest(), timeout=timeout)

    def verify_faces(self, face: str | bytes, other: str | bytes | None = None, *, persona_id: str = "",
                     threshold: float = 0.0, timeout: float | None = None) -> classify_pb2.VerifyFacesResponse:
        """Two faces (each a stored face id, str, or an image with one face, bytes), or a face
        and `persona_id`."""
        request = classify_pb2.VerifyFacesRequest(face=face_input(face), threshold=threshold)
        if persona_id:
            request.persona_id = persona_id
        elif other is not None:
            request.other_face.CopyFrom(face_input(other))
        return self.classifier.VerifyFaces(request, timeout=self._t(timeout))

    def find_similar_faces(self, face: str | bytes | Iterable[float], *, persona_id: str = "",
                           unlabelled_only: bool = False, exclude_hidden: bool = False, page_size: int = 0,
                           page_token: str = "", timeout: float | None = None
                           ) -> classify_pb2.FindSimilarFacesResponse:
        """A stored face id (str), an image with one face (bytes) or an embedding (128 floats)."""
        request = classify_pb2.FindSimilarFacesRequest(persona_id=persona_id, unlabelled_only=unlabelled_only,
                                                       exclude_hidden=exclude_hidden, page_size=page_size,
                                                       page_token=page_token)
        if isinstance(face, str):
            request.face_id = face
        elif isinstance(face, (bytes, bytearray)):
            request.content = bytes(face)
        else:
            request.embedding.values.extend(map(float, face))
        return self.classifier.FindSimilarFaces(request, timeout=self._t(timeout))

    # ---- IngestService -----------------------------------------------------
    def ingest_image(self, content: bytes, filename: str = "", *, timeout: float | None = None
                     ) -> ingest_pb2.IngestImageResponse:
        return self.ingest.IngestImage(ingest_pb2.IngestImageRequest(content=content, filename=filename),
                                       timeout=self._t(timeout))

    def ingest_images(self, items: Iterable[ingest_pb2.IngestImagesRequest], *, timeout: float | None = None
                      ) -> Iterator[ingest_pb2.IngestImagesResponse]:
        return self.ingest.IngestImages(iter(items), timeout=timeout)

    def add_face(self, image_id: str, box: tuple[int, int, int, int], persona_id: str = "", *,
                 timeout: float | None = None) -> ingest_pb2.AddFaceResponse:
        """A face the detector missed: `box` (left, top, right, bottom) drawn on a stored image."""
        left, top, right, bottom = box
        request = ingest_pb2.AddFaceRequest(image_id=image_id, persona_id=persona_id, box=resources_pb2.BoundingBox(
            left=left, top=top, right=right, bottom=bottom))
        return self.ingest.AddFace(request, timeout=self._t(timeout))

    # ---- TrainService: each takes its request message, or the request's fields ---
    def start_training(self, request: train_pb2.StartTrainingRequest | None = None, *,
                       timeout: float | None = None, **fields) -> resources_pb2.TrainingJob:
        request = request or train_pb2.StartTrainingRequest(**fields)
        return self.trainer.StartTraining(request, timeout=self._t(timeout))

    def get_training_job(self, request: train_pb2.GetTrainingJobRequest | None = None, *,
                         timeout: float | None = None, **fields) -> resources_pb2.TrainingJob:
        request = request or train_pb2.GetTrainingJobRequest(**fields)
        return self.trainer.GetTrainingJob(request, timeout=self._t(timeout))

    def list_training_jobs(self, request: train_pb2.ListTrainingJobsRequest | None = None, *,
                           timeout: float | None = None, **fields) -> train_pb2.ListTrainingJobsResponse:
        request = request or train_pb2.ListTrainingJobsRequest(**fields)
        return self.trainer.ListTrainingJobs(request, timeout=self._t(timeout))

    def watch_training_jobs(self, request: train_pb2.WatchTrainingJobsRequest | None = None, *,
                            timeout: float | None = None, **fields) -> Iterator[resources_pb2.TrainingJob]:
        request = request or train_pb2.WatchTrainingJobsRequest(**fields)
        return self.trainer.WatchTrainingJobs(request, timeout=timeout)

    def list_model_versions(self, request: train_pb2.ListModelVersionsRequest | None = None, *,
                            timeout: float | None = None, **fields) -> train_pb2.ListModelVersionsResponse:
        request = request or train_pb2.ListModelVersionsRequest(**fields)
        return self.trainer.ListModelVersions(request, timeout=self._t(timeout))

    def get_model_version(self, request: train_pb2.GetModelVersionRequest | None = None, *,
                          timeout: float | None = None, **fields) -> resources_pb2.ModelVersion:
        request = request or train_pb2.GetModelVersionRequest(**fields)
        return self.trainer.GetModelVersion(request, timeout=self._t(timeout))

    def get_active_model_version(self, request: train_pb2.GetActiveModelVersionRequest | None = None, *,
                                 timeout: float | None = None, **fields) -> resources_pb2.ModelVersion:
        request = request or train_pb2.GetActiveModelVersionRequest(**fields)
        return self.trainer.GetActiveModelVersion(request, timeout=self._t(timeout))

    def activate_model_version(self, request: train_pb2.ActivateModelVersionRequest | None = None, *,
                               timeout: float | None = None, **fields) -> resources_pb2.ModelVersion:
        request = request or train_pb2.ActivateModelVersionRequest(**fields)
        return self.trainer.ActivateModelVersion(request, timeout=self._t(timeout))

    def release_model_pin(self, request: train_pb2.ReleaseModelPinRequest | None = None, *,
                          timeout: float | None = None, **fields) -> resources_pb2.ModelVersion:
        request = request or train_pb2.ReleaseModelPinRequest(**fields)
        return self.trainer.ReleaseModelPin(request, timeout=self._t(timeout))

    # ---- QueryService: each takes its request message, or the request's fields ---
    def create_persona(self, request: query_pb2.CreatePersonaRequest | None = None, *,
                       timeout: float | None = None, **fields) -> resources_pb2.Persona:
        request = request or query_pb2.CreatePersonaRequest(**fields)
        return self.query.CreatePersona(request, timeout=self._t(timeout))

    def get_persona(self, request: query_pb2.GetPersonaRequest | None = None, *,
                    timeout: float | None = None, **fields) -> resources_pb2.Persona:
        request = request or query_pb2.GetPersonaRequest(**fields)
        return self.query.GetPersona(request, timeout=self._t(timeout))

    def list_personas(self, request: query_pb2.ListPersonasRequest | None = None, *,
                      timeout: float | None = None, **fields) -> query_pb2.ListPersonasResponse:
        request = request or query_pb2.ListPersonasRequest(**fields)
        return self.query.ListPersonas(request, timeout=self._t(timeout))

    def update_persona(self, request: query_pb2.UpdatePersonaRequest | None = None, *,
                       timeout: float | None = None, **fields) -> resources_pb2.Persona:
        request = request or query_pb2.UpdatePersonaRequest(**fields)
        return self.query.UpdatePersona(request, timeout=self._t(timeout))

    def delete_persona(self, request: query_pb2.DeletePersonaRequest | None = None, *,
                       timeout: float | None = None, **fields) -> empty_pb2.Empty:
        request = request or query_pb2.DeletePersonaRequest(**fields)
        return self.query.DeletePersona(request, timeout=self._t(timeout))

    def erase_persona(self, request: query_pb2.ErasePersonaRequest | None = None, *,
                      timeout: float | None = None, **fields) -> query_pb2.Erasure:
        request = request or query_pb2.ErasePersonaRequest(**fields)
        return self.query.ErasePersona(request, timeout=self._t(timeout))

    def list_persona_faces(self, request: query_pb2.ListPersonaFacesRequest | None = None, *,
                           timeout: float | None = None, **fields) -> query_pb2.ListPersonaFacesResponse:
        request = request or query_pb2.ListPersonaFacesRequest(**fields)
        return self.query.ListPersonaFaces(request, timeout=self._t(timeout))

    def label_face(self, request: query_pb2.LabelFaceRequest | None = None, *,
                   timeout: float | None = None, **fields) -> resources_pb2.Face:
        return self.query.LabelFace(request or query_pb2.LabelFaceRequest(**fields), timeout=self._t(timeout))

    def unlabel_face(self, request: query_pb2.UnlabelFaceRequest | None = None, *,
                     timeout: float | None = None, **fields) -> resources_pb2.Face:
        request = request or query_pb2.UnlabelFaceRequest(**fields)
        return self.query.UnlabelFace(request, timeout=self._t(timeout))

    def get_face(self, request: query_pb2.GetFaceRequest | None = None, *,
                 timeout: float | None = None, **fields) -> resources_pb2.Face:
        return self.query.GetFace(request or query_pb2.GetFaceRequest(**fields), timeout=self._t(timeout))

    def list_unknown_faces(self, request: query_pb2.ListUnknownFacesRequest | None = None, *,
                           timeout: float | None = None, **fields) -> query_pb2.ListUnknownFacesResponse:
        request = request or query_pb2.ListUnknownFacesRequest(**fields)
        return self.query.ListUnknownFaces(request, timeout=self._t(timeout))

    def get_face_crop(self, request: query_pb2.GetFaceCropRequest | None = None, *,
                      timeout: float | None = None, **fields) -> httpbody_pb2.HttpBody:
        request = request or query_pb2.GetFaceCropRequest(**fields)
        return self.query.GetFaceCrop(request, timeout=self._t(timeout))

    def list_images(self, request: query_pb2.ListImagesRequest | None = None, *,
                    timeout: float | None = None, **fields) -> query_pb2.ListImagesResponse:
        request = request or query_pb2.ListImagesRequest(**fields)
        return self.query.ListImages(request, timeout=self._t(timeout))

    def get_image(self, request: query_pb2.GetImageRequest | None = None, *,
                  timeout: float | None = None, **fields) -> query_pb2.GetImageResponse:
        return self.query.GetImage(request or query_pb2.GetImageRequest(**fields), timeout=self._t(timeout))

    def get_image_content(self, request: query_pb2.GetImageContentRequest | None = None, *,
                          timeout: float | None = None, **fields) -> httpbody_pb2.HttpBody:
        request = request or query_pb2.GetImageContentRequest(**fields)
        return self.query.GetImageContent(request, timeout=self._t(timeout))

    def watch_events(self, request: query_pb2.WatchEventsRequest | None = None, *,
                     timeout: float | None = None, **fields) -> Iterator[resources_pb2.Event]:
        return self.query.WatchEvents(request or query_pb2.WatchEventsRequest(**fields), timeout=timeout)

    def delete_image(self, request: query_pb2.DeleteImageRequest | None = None, *,
                     timeout: float | None = None, **fields) -> query_pb2.Erasure:
        request = request or query_pb2.DeleteImageRequest(**fields)
        return self.query.DeleteImage(request, timeout=self._t(timeout))

    def delete_face(self, request: query_pb2.DeleteFaceRequest | None = None, *,
                    timeout: float | None = None, **fields) -> query_pb2.Erasure:
        request = request or query_pb2.DeleteFaceRequest(**fields)
        return self.query.DeleteFace(request, timeout=self._t(timeout))

    def export_persona(self, request: query_pb2.ExportPersonaRequest | None = None, *,
                       timeout: float | None = None, **fields) -> Iterator[query_pb2.ExportPersonaChunk]:
        return self.query.ExportPersona(request or query_pb2.ExportPersonaRequest(**fields), timeout=timeout)

    def backup(self, request: query_pb2.BackupRequest | None = None, *,
               timeout: float | None = None, **fields) -> Iterator[query_pb2.BackupChunk]:
        return self.query.Backup(request or query_pb2.BackupRequest(**fields), timeout=timeout)

    def list_face_clusters(self, request: query_pb2.ListFaceClustersRequest | None = None, *,
                           timeout: float | None = None, **fields) -> query_pb2.ListFaceClustersResponse:
        request = request or query_pb2.ListFaceClustersRequest(**fields)
        return self.query.ListFaceClusters(request, timeout=self._t(timeout))

    def batch_label_faces(self, request: query_pb2.BatchLabelFacesRequest | None = None, *,
                          timeout: float | None = None, **fields) -> query_pb2.BatchLabelFacesResponse:
        request = request or query_pb2.BatchLabelFacesRequest(**fields)
        return self.query.BatchLabelFaces(request, timeout=self._t(timeout))

    def merge_personas(self, request: query_pb2.MergePersonasRequest | None = None, *,
                       timeout: float | None = None, **fields) -> resources_pb2.Persona:
        request = request or query_pb2.MergePersonasRequest(**fields)
        return self.query.MergePersonas(request, timeout=self._t(timeout))

    def set_face_hidden(self, request: query_pb2.SetFaceHiddenRequest | None = None, *,
                        timeout: float | None = None, **fields) -> resources_pb2.Face:
        request = request or query_pb2.SetFaceHiddenRequest(**fields)
        return self.query.SetFaceHidden(request, timeout=self._t(timeout))

    def set_persona_hidden(self, request: query_pb2.SetPersonaHiddenRequest | None = None, *,
                           timeout: float | None = None, **fields) -> resources_pb2.Persona:
        request = request or query_pb2.SetPersonaHiddenRequest(**fields)
        return self.query.SetPersonaHidden(request, timeout=self._t(timeout))


def face_input(face: str | bytes) -> classify_pb2.FaceInput:
    return classify_pb2.FaceInput(face_id=face) if isinstance(face, str) else classify_pb2.FaceInput(content=face)
