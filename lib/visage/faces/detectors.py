"""Face detectors behind one small interface. The pipeline asks `make_detector`
for one and never learns which it got: dlib HOG (default), dlib CNN, or Azure
AI Face (boxes only; landmarks and embeddings stay local)."""
from __future__ import annotations

import abc
import io

import numpy as np

from visage.faces.models import CNN_DETECTOR, model_path
from visage.faces.settings import FaceSettings

Box = tuple[int, int, int, int]  # left, top, right, bottom


class DetectorUnavailable(RuntimeError):
    """The detector could not answer (remote service refused or failed)."""


class Detector(abc.ABC):
    name: str

    @abc.abstractmethod
    def detect(self, rgb: np.ndarray) -> list[Box]:
        """Face boxes in the pixel coordinates of `rgb` (H x W x 3 uint8)."""


class HogDetector(Detector):
    name = "hog"

    def __init__(self, upsample: int) -> None:
        import dlib
        self._detector = dlib.get_frontal_face_detector()
        self._upsample = upsample

    def detect(self, rgb: np.ndarray) -> list[Box]:
        return [_ltrb(rect) for rect in self._detector(rgb, self._upsample)]


class CnnDetector(Detector):
    name = "cnn"

    def __init__(self, upsample: int) -> None:
        import dlib
        self._detector = dlib.cnn_face_detection_model_v1(model_path(CNN_DETECTOR))
        self._upsample = upsample

    def detect(self, rgb: np.ndarray) -> list[Box]:
        return [_ltrb(found.rect) for found in self._detector(rgb, self._upsample)]


class AzureFaceDetector(Detector):
    """Azure AI Face `detection_03` through the official SDK. The SDK's retry
    policy already honours 429 Retry-After and retries 5xx; what is left after
    the retries becomes DetectorUnavailable with the service's own message."""
    name = "azure"

    def __init__(self, endpoint: str, key: str, **client_options) -> None:
        from azure.ai.vision.face import FaceClient
        from azure.core.credentials import AzureKeyCredential
        client_options.setdefault("retry_total", 3)
        self._client = FaceClient(endpoint=endpoint, credential=AzureKeyCredential(key), **client_options)

    def detect(self, rgb: np.ndarray) -> list[Box]:
        from azure.ai.vision.face.models import FaceDetectionModel, FaceRecognitionModel
        from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError
        try:
            results = self._client.detect(
                _jpeg(rgb),
                detection_model=FaceDetectionModel.DETECTION03,
                # Required by the SDK signature; unused because no face ids are returned.
                recognition_model=FaceRecognitionModel.RECOGNITION04,
                return_face_id=False,
            )
        except ClientAuthenticationError as error:
            raise DetectorUnavailable(f"Azure Face rejected the credentials (HTTP {error.status_code}): "
                                      f"{_azure_message(error)}") from None
        except HttpResponseError as error:
            raise DetectorUnavailable(f"Azure Face failed (HTTP {error.status_code}): "
                                      f"{_azure_message(error)}") from None
        except AzureError as error:
            raise DetectorUnavailable(f"Azure Face unreachable: {error}") from None
        return [_rectangle_ltrb(result.face_rectangle) for result in results]

    def close(self) -> None:
        self._client.close()


def make_detector(settings: FaceSettings) -> Detector:
    if settings.uses_azure:
        return AzureFaceDetector(settings.azure_endpoint, settings.azure_key)
    if settings.detector == "hog":
        return HogDetector(settings.upsample)
    if settings.detector == "cnn":
        return CnnDetector(settings.upsample)
    raise ValueError(f"unknown VISAGE_DETECTOR {settings.detector!r} (expected 'hog' or 'cnn')")


def _ltrb(rect) -> Box:
    return rect.left(), rect.top(), rect.right(), rect.bottom()


def _rectangle_ltrb(rectangle) -> Box:
    return rectangle.left, rectangle.top, rectangle.left + rectangle.width, rectangle.top + rectangle.height


def _jpeg(rgb: np.ndarray) -> bytes:
    from PIL import Image
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def _azure_message(error) -> str:
    inner = getattr(error, "error", None)
    if inner is not None and getattr(inner, "message", None):
        return f"{inner.code}: {inner.message}" if getattr(inner, "code", None) else inner.message
    return error.reason or str(error)
