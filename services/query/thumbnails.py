"""Small JPEG thumbnails of stored images (GetImageContent with a size), kept
in a bounded in-memory LRU: a list page of 60 images costs 60 small reads
instead of 60 full-size originals, and a second visit costs no decoding."""
from __future__ import annotations

import io
import threading
from collections import OrderedDict

from PIL import Image, ImageOps

CACHE_BYTES = 64 * 1024 * 1024
JPEG_QUALITY = 82


class ThumbnailCache:
    def __init__(self, max_bytes: int = CACHE_BYTES):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, image_id: str, size: int, load) -> bytes:
        """The thumbnail of image_id whose longer side is at most `size`;
        `load()` returns the original bytes when it is not cached."""
        key = (image_id, size)
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        thumbnail = make_thumbnail(load(), size)
        with self._lock:
            if key not in self._entries:
                self._entries[key] = thumbnail
                self._bytes += len(thumbnail)
            while self._bytes > self.max_bytes and self._entries:
                _key, evicted = self._entries.popitem(last=False)
                self._bytes -= len(evicted)
        return thumbnail


def make_thumbnail(content: bytes, size: int) -> bytes:
    with Image.open(io.BytesIO(content)) as image:
        image = ImageOps.exif_transpose(image)
        image.thumbnail((size, size))
        if image.mode != "RGB":
            image = image.convert("RGB")
        out = io.BytesIO()
        image.save(out, "JPEG", quality=JPEG_QUALITY)
        return out.getvalue()
