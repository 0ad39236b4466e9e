"""Small JPEGs made from stored images, kept in one bounded in-memory LRU:
thumbnails (GetImageContent with a size) and upright face crops (GetFaceCrop
with upright). A list page of 60 images costs 60 small reads instead of 60
full-size originals, and a second visit costs no decoding.

Erasure: the replica that erases forgets the image's and faces' entries at
once (`forget`); from its first entry on, each replica's cache also gets every
batch of the event log its query service reads (visage_query.events.EventLog,
which `follow` starts) and forgets what every ERASED event names (another
replica's erasures), within the poller's interval. Entries are served only while the store
still has the image or face (the caller reads it first)."""
from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable

from PIL import Image, ImageOps

from visage.store.records import EventRecord
from visage.v1 import resources_pb2 as pb

CACHE_BYTES = 64 * 1024 * 1024
JPEG_QUALITY = 82
UPRIGHT_CROP_SIZE = 256  # longer side: a face card is ~160 CSS px wide, sharp at 1.5x
# Around the face box, on each side, as a share of the box's longer side: the
# detector's box is tight (brows to chin); people recognise a face with its hair and chin.
UPRIGHT_CROP_MARGIN = 0.3
ERASED_IDS_KEPT = 10_000  # recently erased ids never cached again (a request that read them before the erasure)

# (image id, face id or "" for a thumbnail, size)
Key = tuple[str, str, int]


class ThumbnailCache:
    def __init__(self, follow: Callable[[], None] = lambda: None, max_bytes: int = CACHE_BYTES):
        """`follow()` (idempotent) starts what calls `forget_erased`; it runs before an entry is made."""
        self._follow = follow
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Key, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._erased: OrderedDict[str, None] = OrderedDict()

    def thumbnail(self, image_id: str, size: int, load: Callable[[], bytes]) -> bytes:
        """The thumbnail of image_id whose longer side is at most `size`;
        `load()` returns the original bytes when it is not cached."""
        return self._get((image_id, "", size), lambda: make_thumbnail(load(), size))

    def upright_crop(self, image_id: str, face_id: str, box: tuple[int, int, int, int], full_size: tuple[int, int],
                     load: Callable[[], bytes]) -> bytes:
        """The face at `box` (upright full-size pixels of an image `full_size` big) cut from its photo."""
        return self._get((image_id, face_id, UPRIGHT_CROP_SIZE),
                         lambda: make_upright_crop(load(), box, full_size))

    def forget(self, image_ids: Iterable[str] = (), face_ids: Iterable[str] = ()) -> None:
        """Drops every entry of these images and faces (erasure)."""
        images, faces = set(image_ids), set(face_ids) - {""}
        with self._lock:
            for key in [k for k in self._entries if k[0] in images or k[1] in faces]:
                self._bytes -= len(self._entries.pop(key))
            self._erased.update(dict.fromkeys(images | faces))
            while len(self._erased) > ERASED_IDS_KEPT:
                self._erased.popitem(last=False)

    def forget_erased(self, events: list[EventRecord]) -> None:
        """Drops what the ERASED events among `events` name (a subscriber of the event log)."""
        for event in events:
            if event.type == pb.EVENT_TYPE_ERASED:
                self.forget(_ids(event.attributes, "image_ids"), _ids(event.attributes, "face_ids"))

    def __contains__(self, image_or_face_id: str) -> bool:
        with self._lock:
            return any(image_or_face_id in (key[0], key[1]) for key in self._entries)

    def _get(self, key: Key, make: Callable[[], bytes]) -> bytes:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        self._follow()  # before the entry: an erasure after this reaches forget_erased
        made = make()
        with self._lock:
            if key not in self._entries and key[0] not in self._erased and key[1] not in self._erased:
                self._entries[key] = made
                self._bytes += len(made)
            while self._bytes > self.max_bytes and self._entries:
                _key, evicted = self._entries.popitem(last=False)
                self._bytes -= len(evicted)
        return made


def _ids(attributes: dict[str, str], name: str) -> list[str]:
    return [value for value in attributes.get(name, "").split(",") if value]


def make_thumbnail(content: bytes, size: int) -> bytes:
    with Image.open(io.BytesIO(content)) as image:
        image = ImageOps.exif_transpose(image)
        image.thumbnail((size, size))
        return _jpeg(image)


def make_upright_crop(content: bytes, box: tuple[int, int, int, int], full_size: tuple[int, int]) -> bytes:
    """A square around the face box with UPRIGHT_CROP_MARGIN, kept inside the photo, at
    most UPRIGHT_CROP_SIZE px. A large JPEG is decoded only as finely as the crop needs."""
    left, top, right, bottom = _square_around(box, full_size)
    with Image.open(io.BytesIO(content)) as image:
        reduction = next((r for r in (8, 4, 2) if (right - left) // r >= UPRIGHT_CROP_SIZE), 1)
        if reduction > 1 and image.format == "JPEG":
            image.draft("RGB", (image.width // reduction, image.height // reduction))
        image = ImageOps.exif_transpose(image)
        scale = image.width / full_size[0]  # the decode may be reduced
        crop = image.crop(tuple(round(v * scale) for v in (left, top, right, bottom)))
        crop.thumbnail((UPRIGHT_CROP_SIZE, UPRIGHT_CROP_SIZE))
        return _jpeg(crop)


def _square_around(box: tuple[int, int, int, int], full_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The square centred on the box, its side the box's longer side plus the margin on both sides,
    shifted (then shrunk) to stay inside the photo: no blank wedges, the face whole."""
    width, height = full_size
    left, top, right, bottom = box
    side = min(width, height, round(max(right - left, bottom - top) * (1 + 2 * UPRIGHT_CROP_MARGIN)))
    x = min(max(0, round((left + right - side) / 2)), width - side)
    y = min(max(0, round((top + bottom - side) / 2)), height - side)
    return x, y, x + side, y + side


def _jpeg(image: Image.Image) -> bytes:
    if image.mode != "RGB":
        image = image.convert("RGB")
    out = io.BytesIO()
    image.save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()
