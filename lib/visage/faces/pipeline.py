"""The face pipeline: image bytes in, faces out (box, 5-point landmarks,
aligned chip, 128-d ResNet embedding), all offline with dlib's models (the
ResNet run by ONNX Runtime: visage.faces.encoder).

One FacePipeline holds the loaded dlib models (~40 MB, ~1 s to load); it is
not thread-safe. Services use it through visage.faces.pool.PipelinePool, which
keeps one per worker process."""
from __future__ import annotations

import functools
import io
import os
import threading
import struct
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from visage.config import Config
from visage.faces.detectors import Box, Detector, make_detector, overlap
from visage.faces.encoder import OnnxFaceEncoder
from visage.faces.models import CNN_DETECTOR, FIVE_POINT_PREDICTOR, RESNET_ENCODER, model_path
from visage.faces.settings import FaceSettings

CHIP_SIZE = 150  # the ResNet encoder's input size
CHIP_PADDING = 0.25  # dlib's default: the encoder was trained on chips with this margin
# A downscaled detection is trusted when its smallest face is at least this many times the
# smallest face it can see; else the detector runs again at full size (FacePipeline._may_miss_smaller).
SMALLER_FACES_MARGIN = 2.0
CROP_JPEG_QUALITY = 90
# The one list of accepted formats (Pillow's names), enforced when an image is
# opened: any other format Pillow could parse (TIFF, ICO, PSD, ...) is refused
# before its pixels are decoded. ICO in particular wraps a PNG whose real size
# Pillow only learns by decoding it.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
ACCEPTED_FORMAT_NAMES = "JPEG, PNG, WebP, BMP or GIF"
# A drawn box (describe_box) is checked by dlib's CNN face detector on the box and this share of
# its longer side around it, scaled so that the box's shorter side is CHECK_SIDE pixels: faces
# from about half the box up are found (the detector's window is ~40 px), at ~0.2 s on one core.
# Measured on the shared group photos: every face (the one HOG scores -0.2 in bbt2's background
# too) at confidence >= 1.0; background (a bottle HOG scores -0.3, a wall, a shirt, hair) none.
NEIGHBOURHOOD = 0.5
CHECK_SIDE = 100
MIN_CONFIDENCE = 0.5


class NotAFace(ValueError):
    """A drawn box that is malformed, outside the image, too small, or holds no face (→ INVALID_ARGUMENT)."""


class InvalidImage(ValueError):
    """Empty, truncated, not an image, or a decompression bomb (→ INVALID_ARGUMENT)."""


class ImageTooLarge(ValueError):
    """Over config.max_image_bytes (→ RESOURCE_EXHAUSTED)."""


@dataclass(frozen=True)
class FoundFace:
    box: tuple[int, int, int, int]  # left, top, right, bottom in ORIGINAL image pixels
    landmarks: list[tuple[float, float]]  # dlib 5-point landmarks, original pixels
    embedding: np.ndarray  # float32, shape (128,)
    crop_jpeg: bytes  # aligned face chip as JPEG


@dataclass(frozen=True)
class AnalyzedImage:
    content_type: str
    width: int
    height: int
    faces: list[FoundFace]


def check_size(content: bytes, max_bytes: int) -> None:
    """Cheap checks done before any decoding (also by the pool, before the
    bytes are shipped to a worker process)."""
    if not content:
        raise InvalidImage("image is empty (0 bytes)")
    if len(content) > max_bytes:
        raise ImageTooLarge(f"image is {len(content):,} bytes; the limit is {max_bytes:,} bytes")


def open_image(content: bytes, max_bytes: int, max_pixels: int, min_side: int = 1) -> Image.Image:
    """Parses only the header (Pillow opens lazily) and refuses, before any
    pixel is decoded: other formats than ACCEPTED_FORMATS, more pixels than
    `max_pixels`, a side shorter than `min_side`. Cheap enough to run in the
    service process before an image is queued for a worker."""
    check_size(content, max_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(content), formats=ACCEPTED_FORMATS)
    except UnidentifiedImageError:
        raise InvalidImage(_unaccepted_format_message(content)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InvalidImage(f"decompression bomb refused: {error}") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as error:
        raise InvalidImage(f"image header is corrupt or truncated: {error}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise InvalidImage(f"image is {width}x{height} = {width * height:,} pixels; the limit is "
                           f"{max_pixels:,} pixels (VISAGE_MAX_IMAGE_PIXELS; decompression bomb protection)")
    if min(width, height) < min_side:
        raise InvalidImage(f"image is {width}x{height} pixels; each side must be at least {min_side} pixels "
                           "(the smallest face searched for)")
    if image.format == "JPEG" and len(content) < (least := jpeg_least_bytes(width, height)):
        raise InvalidImage(f"image header claims {width}x{height} pixels in only {len(content):,} bytes; a JPEG "
                           f"that size has at least {least:,}: truncated, or a decompression bomb")
    return image


LOWEST_PRIORITY = 19  # nice


def at_lowest_priority(work):
    """work() in a thread of its own at the lowest CPU priority (nice 19; on Linux a thread's
    own), so that another worker's image takes the CPU first. For the full-size look at a large
    photo: a faceless 6000x6000 one costs ~10 s of CPU there, 10x what admission charges it, and
    used to slow everyone's images as much (issue 25, finding 8). The priority ends with the
    thread (lowering it back would need privileges); where it cannot be set, work runs as is."""
    outcome: dict = {}

    def run() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOWEST_PRIORITY)
        except (AttributeError, OSError):
            pass
        try:
            outcome["result"] = work()
        except BaseException as error:  # noqa: BLE001 - raised again in the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=run, name="face-full-size-look")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def jpeg_least_bytes(width: int, height: int) -> int:
    """Half the bytes the smallest complete JPEG of this size has: every 8x8 block's DC
    coefficient costs at least one bit (a Huffman code), so a file holding fewer is
    mostly missing and would cost a full decode for nothing (issue 25)."""
    blocks = -(-width // 8) * -(-height // 8)
    return blocks // 16


def _unaccepted_format_message(content: bytes) -> str:
    """Names a format Pillow knows but Visage does not accept (header only)."""
    try:
        known = Image.open(io.BytesIO(content)).format
    except Exception:  # noqa: BLE001 - not an image Pillow knows at all
        known = None
    if known:
        return f"{known} images are not accepted; send {ACCEPTED_FORMAT_NAMES}"
    return f"not an image: the bytes match no accepted image format ({ACCEPTED_FORMAT_NAMES})"


def reduction_for(image: Image.Image, min_long_side: int) -> int:
    """The largest JPEG DCT reduction (8, 4 or 2; else 1) that still leaves the
    long side at least `min_long_side` pixels. Only JPEG decodes at a fraction of
    its size (libjpeg scales while it decodes: 1/4 costs ~1/16 of the work);
    Pillow decodes PNG, WebP, BMP and GIF at full size only."""
    if image.format != "JPEG" or min_long_side <= 0:
        return 1
    return next((factor for factor in (8, 4, 2) if max(image.size) // factor >= min_long_side), 1)


def detection_scale(width: int, height: int, detect_max_side: int) -> float:
    """How much an image is downscaled for detection (FacePipeline._detect)."""
    longest = max(width, height)
    return detect_max_side / longest if detect_max_side and longest > detect_max_side else 1.0


def detection_pixels(width: int, height: int, detect_max_side: int) -> int:
    """How many pixels the detector examines for an image this size. Detection
    is most of an image's CPU time, and it grows with these pixels."""
    scale = detection_scale(width, height, detect_max_side)
    return max(1, round(width * scale)) * max(1, round(height * scale))


class Decoded(NamedTuple):
    image: Image.Image  # upright RGB; a reduced JPEG's at 1/reduction of full_size
    content_type: str  # MIME type
    full_size: tuple[int, int]  # width, height upright at full resolution


def decode_image(content: bytes, max_bytes: int, max_pixels: int, min_side: int = 1,
                 reduction: int = 1) -> Decoded:
    """Decodes to an upright RGB image. A JPEG is decoded at 1/`reduction` of
    its size (see reduction_for); other formats ignore `reduction`."""
    image = open_image(content, max_bytes, max_pixels, min_side)
    content_type = Image.MIME.get(image.format or "", "application/octet-stream")
    width, height = image.size
    if reduction > 1 and image.format == "JPEG":
        image.draft(None, (width // reduction, height // reduction))  # DCT scaling: exactly 1/reduction
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
            upright = ImageOps.exif_transpose(image)
            turned = image.getexif().get(ExifTags.Base.Orientation) in (5, 6, 7, 8)  # read by exif_transpose
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InvalidImage(f"decompression bomb refused: {error}") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as error:
        raise InvalidImage(f"image data is corrupt or truncated: {error}") from None
    if upright.size != image.size and upright.size[::-1] != image.size:
        raise InvalidImage(f"image decoded to {upright.width}x{upright.height}, not the {image.width}x{image.height} "
                           "its header claims")
    return Decoded(_to_rgb(upright), content_type, (height, width) if turned else (width, height))


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB for dlib. Transparent pixels go on white: dropping alpha would expose
    whatever colour the encoder left under them."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        # 16/32-bit greyscale: scale into 8 bits instead of clipping to white.
        array = np.asarray(image, dtype=np.float64)
        peak = array.max() or 1.0
        image = Image.fromarray((array * (255.0 / peak)).astype(np.uint8))
    return image.convert("RGB")


class FacePipeline:
    def __init__(self, config: Config, settings: FaceSettings | None = None,
                 detector: Detector | None = None) -> None:
        import dlib
        self._dlib = dlib
        self.config = config
        self.settings = settings or FaceSettings.from_env()
        self.detector = detector or make_detector(self.settings)
        self._landmarks = dlib.shape_predictor(model_path(FIVE_POINT_PREDICTOR))
        # dlib's ResNet with dlib's weights, run by ONNX Runtime (several times faster; visage.faces.encoder).
        self._encoder = OnnxFaceEncoder(model_path(RESNET_ENCODER))

    def analyze(self, content: bytes) -> AnalyzedImage:
        header = open_image(content, self.config.max_image_bytes, self.settings.max_pixels,
                            self.settings.min_face_size)
        # A large JPEG is decoded only as large as detection uses (a 6000x6000 one
        # at 3000x3000, a quarter of the work); faces too small there for a full
        # chip get a finer decode below. Boxes and landmarks are in original pixels.
        reduction = reduction_for(header, self.settings.detect_max_side)
        image, content_type, (width, height) = self._decode(content, reduction)
        boxes = [_scale_box(box, width / image.width, height / image.height) for box in self._detect(image)]
        if self._may_miss_smaller(boxes, image, width):
            # The faces seen are near the smallest this scale can see (or none was): faces smaller
            # still may be there, so the detector looks again at full size, as face_recognition does.
            reduction = 1
            image, boxes = at_lowest_priority(lambda: self._look_at_full_size(content))
        boxes = [box for box in boxes if _short_side(box) >= self.settings.min_face_size]
        boxes.sort(key=lambda box: (box[0], box[1]))  # stable, human-friendly face order
        finer = _reduction_to_describe(boxes, reduction)
        if finer < reduction:
            image = self._decode(content, finer).image
        faces = self._describe(np.asarray(image), boxes, width, height)
        return AnalyzedImage(content_type=content_type, width=width, height=height, faces=faces)

    def describe_box(self, content: bytes, box: Box) -> FoundFace:
        """The face inside a box a person drew on this image (original pixels): the face
        dlib's CNN detector finds there (its box, usually tighter) with landmarks, chip and
        embedding, as analyze() describes a detected one. Raises NotAFace."""
        header = open_image(content, self.config.max_image_bytes, self.settings.max_pixels,
                            self.settings.min_face_size)
        check_drawn_box(box, *header.size, self.settings.min_face_size)
        reduction = _reduction_to_describe([box], reduction_for(header, self.settings.detect_max_side))
        image, _content_type, (width, height) = self._decode(content, reduction)
        face_box = _face_in(image, box, width / image.width, height / image.height)
        return self._describe(np.asarray(image), [face_box], width, height)[0]

    def _decode(self, content: bytes, reduction: int) -> Decoded:
        return decode_image(content, self.config.max_image_bytes, self.settings.max_pixels,
                            self.settings.min_face_size, reduction)

    def _detect(self, image: Image.Image) -> list[Box]:
        """Boxes in `image` pixels. Images with a side over detect_max_side
        (1600) are downscaled for detection only. Measured (HOG, upsample 1,
        2-core shared box) on the shared photos at full / 1600 / 1024 / 800 px:
        biden1 970x2204 739/376/158/100 ms, bbt1 1366x768 468/421/307/161 ms;
        every photo kept the same face count down to 640 px. HOG time grows
        with pixels, so a 12 MP phone photo costs ~6x less at 1600 while faces
        down to ~100 original px (2.5% of a 4032 px side) are still found."""
        scale = detection_scale(image.width, image.height, self.settings.detect_max_side)
        if scale == 1.0:
            return self.detector.detect(np.asarray(image))
        small = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BILINEAR)
        return [tuple(round(v / scale) for v in box) for box in self.detector.detect(np.asarray(small))]

    def _look_at_full_size(self, content: bytes) -> tuple[Image.Image, list[Box]]:
        image = self._decode(content, 1).image
        return image, self.detector.detect_full_size(np.asarray(image))

    def _may_miss_smaller(self, boxes: list[Box], image: Image.Image, width: int) -> bool:
        """Whether detection on a downscaled `image` (boxes in original pixels; `width`: the
        original's) may have missed faces the detector would find at full size: none was found,
        or the smallest found is under SMALLER_FACES_MARGIN x the smallest face this scale sees
        (faces in one photo vary in size: a back row is about half the front's). A photo whose
        faces are all large (a portrait, a group close up) keeps the cheap detection."""
        scale = detection_scale(image.width, image.height, self.settings.detect_max_side) * image.width / width
        if scale >= 1.0:
            return False
        smallest_seen = self.detector.smallest_face / scale  # original pixels
        return not boxes or min(_short_side(box) for box in boxes) < SMALLER_FACES_MARGIN * smallest_seen

    def _describe(self, rgb: np.ndarray, boxes: list[Box], width: int, height: int) -> list[FoundFace]:
        """`boxes` are in original pixels (width x height); `rgb` may be a reduced decode.
        Every face's embedding is computed in one encoder run."""
        dlib = self._dlib
        x_scale, y_scale = rgb.shape[1] / width, rgb.shape[0] / height
        shapes = [self._landmarks(rgb, dlib.rectangle(*_scale_box(box, x_scale, y_scale))) for box in boxes]
        chips = [dlib.get_face_chip(rgb, shape, size=CHIP_SIZE, padding=CHIP_PADDING) for shape in shapes]
        embeddings = self._encoder.describe(chips)
        return [FoundFace(
            # Detectors may overhang the frame; stored boxes stay inside it.
            box=(max(0, left), max(0, top), min(width - 1, right), min(height - 1, bottom)),
            landmarks=[(point.x / x_scale, point.y / y_scale) for point in shape.parts()],
            embedding=embedding,
            crop_jpeg=_jpeg(chip),
        ) for (left, top, right, bottom), shape, chip, embedding in zip(boxes, shapes, chips, embeddings)]


def check_drawn_box(box: Box, width: int, height: int, min_face_size: int) -> None:
    """NotAFace unless `box` is a box inside a `width` x `height` image, at least
    `min_face_size` pixels on its shorter side."""
    left, top, right, bottom = box
    if not (left < right and top < bottom):
        raise NotAFace(f"box {left},{top},{right},{bottom} is empty: left < right and top < bottom")
    if left < 0 or top < 0 or right > width or bottom > height:
        raise NotAFace(f"box {left},{top},{right},{bottom} is outside the image (0,0,{width},{height})")
    if _short_side(box) < min_face_size:
        raise NotAFace(f"box {left},{top},{right},{bottom} is too small: faces are at least {min_face_size} "
                       "pixels a side (VISAGE_MIN_FACE_SIZE)")


@functools.cache
def _box_checker():
    """dlib's CNN face detector, loaded once per process on the first drawn box."""
    import dlib
    return dlib.cnn_face_detection_model_v1(model_path(CNN_DETECTOR))


def _face_in(image: Image.Image, box: Box, x_scale: float, y_scale: float) -> Box:
    """The most confident CNN detection centred in `box` (original pixels; `image` is decoded at
    1/x_scale, 1/y_scale of them), searched in the box's neighbourhood. Raises NotAFace."""
    left, top, right, bottom = _scale_box(box, 1 / x_scale, 1 / y_scale)  # in `image` pixels
    margin = NEIGHBOURHOOD * max(right - left, bottom - top)
    area = (max(0, round(left - margin)), max(0, round(top - margin)),
            min(image.width, round(right + margin)), min(image.height, round(bottom + margin)))
    zoom = CHECK_SIDE / max(1, min(right - left, bottom - top))
    crop = image.crop(area).resize((max(1, round((area[2] - area[0]) * zoom)),
                                    max(1, round((area[3] - area[1]) * zoom))), Image.Resampling.BILINEAR)
    found = []
    for detection in _box_checker()(np.asarray(crop), 0):
        rect = detection.rect
        candidate = (round((rect.left() / zoom + area[0]) * x_scale), round((rect.top() / zoom + area[1]) * y_scale),
                     round((rect.right() / zoom + area[0]) * x_scale),
                     round((rect.bottom() / zoom + area[1]) * y_scale))
        if detection.confidence >= MIN_CONFIDENCE and _centred_in(candidate, box):
            found.append((detection.confidence, candidate))
    if not found:
        raise NotAFace(f"no face found in the box {','.join(map(str, box))}: draw it around one face, "
                       "from the hairline to the chin")
    return max(found)[1]


def _centred_in(candidate: Box, box: Box) -> bool:
    """Whether a detection's centre lies in the drawn box and more than half of the smaller of
    the two is covered (a neighbour's face at the edge of the neighbourhood is not it)."""
    centre_x, centre_y = (candidate[0] + candidate[2]) / 2, (candidate[1] + candidate[3]) / 2
    return box[0] <= centre_x <= box[2] and box[1] <= centre_y <= box[3] and overlap(candidate, box) > 0.5


def _scale_box(box: Box, x_scale: float, y_scale: float) -> Box:
    left, top, right, bottom = box
    return round(left * x_scale), round(top * y_scale), round(right * x_scale), round(bottom * y_scale)


def _reduction_to_describe(boxes: list[Box], reduction: int) -> int:
    """The coarsest reduction (at most `reduction`) at which every face is still
    at least CHIP_SIZE pixels, so its chip is downscaled, never upscaled: the
    embedding then matches a full-resolution decode."""
    if not boxes or reduction == 1:
        return reduction
    smallest = min(_short_side(box) for box in boxes)
    return next((factor for factor in (8, 4, 2) if factor <= reduction and smallest // factor >= CHIP_SIZE), 1)


def _short_side(box: Box) -> int:
    return min(box[2] - box[0], box[3] - box[1])


def _jpeg(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=CROP_JPEG_QUALITY)
    return buffer.getvalue()
