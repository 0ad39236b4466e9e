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
FULL_SIZE_THRESHOLD = -0.2  # HOG's score threshold for HogDetector.detect_full_size (dlib's default: 0)


def overlap(a: Box, b: Box) -> float:
    """The share of the smaller box that the other covers (0: apart, 1: one inside the other)."""
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return max(0, width) * max(0, height) / smaller if smaller > 0 else 0.0


class DetectorUnavailable(RuntimeError):
    """The detector could not answer (remote service refused or failed)."""


class Detector(abc.ABC):
    name: str
    # The shortest face side (pixels of the image given) it finds: dlib's HOG and CNN scan an
    # 80 px window over an image upsampled `upsample` times, so 80 / 2**upsample.
    smallest_face: float = 80.0

    @abc.abstractmethod
    def detect(self, rgb: np.ndarray) -> list[Box]:
        """Face boxes in the pixel coordinates of `rgb` (H x W x 3 uint8)."""

    def detect_full_size(self, rgb: np.ndarray) -> list[Box]:
        """The second look at a large photo, at full size (FacePipeline._may_miss_smaller)."""
        return self.detect(rgb)


class HogDetector(Detector):
    name = "hog"

    def __init__(self, upsample: int) -> None:
        import dlib
        self._detector = dlib.get_frontal_face_detector()
        self._upsample = upsample
        self.smallest_face = 80.0 / 2 ** upsample

    def detect(self, rgb: np.ndarray) -> list[Box]:
        return [_ltrb(rect) for rect in self._detector(rgb, self._upsample)]

    def detect_full_size(self, rgb: np.ndarray) -> list[Box]:
        """The full-size look costs what face_recognition's whole detection does. On luminance
        (the input of dlib's own HOG examples) HOG runs ~1.45x faster, and a threshold
        FULL_SIZE_THRESHOLD lower keeps every face the colour pass finds (bench_vs_fr's photo
        sets: all 112, plus 2 real blurred faces the colour pass missed)."""
        from PIL import Image
        luminance = np.asarray(Image.fromarray(rgb).convert("L"))
        rects, _scores, _filters = self._detector.run(luminance, self._upsample, FULL_SIZE_THRESHOLD)
        return [_ltrb(rect) for rect in rects]


class CnnDetector(Detector):
    name = "cnn"

    def __init__(self, upsample: int) -> None:
        import dlib
        self._detector = dlib.cnn_face_detection_model_v1(model_path(CNN_DETECTOR))
        self._upsample = upsample
        self.smallest_face = 80.0 / 2 ** upsample

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
