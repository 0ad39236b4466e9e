"""Data minimisation at ingest: the stored original keeps its pixels and nothing
else. EXIF (GPS, camera, time), XMP, IPTC, comments and text chunks are removed
from the container without re-encoding, so the pixels stay byte-identical; only
an image whose EXIF orientation says it is rotated is decoded, turned upright
and re-encoded (its faces' boxes are found on the upright image, so they match
what is served). Colour profiles (ICC) and the Adobe colour-transform marker are
kept: they are needed to show the colours right and say nothing of the subject.

Any image this cannot parse is re-encoded by Pillow without metadata; bytes
Pillow cannot open either are returned unchanged (the face pipeline refuses them)."""
from __future__ import annotations

import io
import struct

from PIL import Image, ImageOps

ORIENTATION_TAG = 0x0112
MAX_PIXELS_TO_ROTATE = 100_000_000  # larger images are left to the pipeline's bomb check
JPEG_QUALITY = 95
PNG_DROPPED_CHUNKS = {b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"tIME"}
WEBP_DROPPED_CHUNKS = {b"EXIF", b"XMP "}
GIF_KEPT_APPLICATIONS = (b"NETSCAPE2.0", b"ANIMEXTS1.0")  # the loop count, nothing personal


class _Unparsed(ValueError):
    """The container is not what its signature said (or is truncated)."""


def minimise(content: bytes) -> bytes:
    """The image without metadata (see the module doc)."""
    try:
        if _rotated(content):
            return _reencode(content, upright=True)
        for signature, strip in _STRIPPERS:
            if content.startswith(signature):
                return strip(content)
        return content  # BMP and other formats without a metadata block
    except _Unparsed:
        return _reencode_or_keep(content)
    except Exception:  # noqa: BLE001 - a broken image is the pipeline's to refuse, with its message
        return content


def _rotated(content: bytes) -> bool:
    with Image.open(io.BytesIO(content)) as image:
        return image.getexif().get(ORIENTATION_TAG, 1) not in (0, 1)


def _reencode_or_keep(content: bytes) -> bytes:
    try:
        return _reencode(content, upright=False)
    except Exception:  # noqa: BLE001 - not an image Pillow reads: the pipeline refuses it
        return content


def _reencode(content: bytes, upright: bool) -> bytes:
    with Image.open(io.BytesIO(content)) as image:
        if image.width * image.height > MAX_PIXELS_TO_ROTATE:
            return content  # the pipeline refuses it as a decompression bomb
        fmt = image.format if image.format in ("JPEG", "PNG", "WEBP", "GIF", "BMP") else "PNG"
        icc = image.info.get("icc_profile")
        image.load()
        out = ImageOps.exif_transpose(image) if upright else image.copy()
    out.info = {}  # nothing of the original's metadata travels with the pixels
    options: dict = {"icc_profile": icc} if icc and fmt in ("JPEG", "PNG", "WEBP") else {}
    if fmt == "JPEG":
        options.update(quality=JPEG_QUALITY, subsampling=0)
    elif fmt == "WEBP":
        options.update(quality=JPEG_QUALITY)
    buffer = io.BytesIO()
    out.save(buffer, format=fmt, **options)
    return buffer.getvalue()


# ---- JPEG ----------------------------------------------------------------------
def _jpeg_segment_kept(marker: int, payload: bytes) -> bool:
    if marker == 0xFE:  # COM
        return False
    if 0xE0 <= marker <= 0xEF:  # APPn: JFIF (APP0), ICC (APP2 "ICC_PROFILE"), Adobe (APP14) stay
        return (marker == 0xE0 or (marker == 0xE2 and payload.startswith(b"ICC_PROFILE\0"))
                or (marker == 0xEE and payload.startswith(b"Adobe")))
    return True


def _strip_jpeg(content: bytes) -> bytes:
    """Copies the segments worth keeping and the entropy-coded scans, up to the first EOI
    (what follows it, e.g. an MPO's second picture or a trailer, is dropped)."""
    out = bytearray(b"\xff\xd8")
    pos, in_scan = 2, False
    while pos < len(content):
        if in_scan:  # entropy-coded data: 0xFF is stuffed (FF00), a restart (FFD0-7) or a marker
            next_ff = content.find(b"\xff", pos)
            if next_ff < 0 or next_ff + 1 >= len(content):
                raise _Unparsed("JPEG scan runs past the end")
            follower = content[next_ff + 1]
            if follower == 0xFF:  # a fill byte: the marker (or data) starts at the next 0xFF
                out += content[pos:next_ff + 1]
                pos = next_ff + 1
                continue
            if follower == 0x00 or 0xD0 <= follower <= 0xD7:
                out += content[pos:next_ff + 2]
                pos = next_ff + 2
                continue
            out += content[pos:next_ff]
            pos, in_scan = next_ff, False
            continue
        if content[pos] != 0xFF or pos + 1 >= len(content):
            raise _Unparsed("JPEG marker expected")
        marker = content[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # EOI
            return bytes(out + b"\xff\xd9")
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            out += content[pos:pos + 2]
            pos += 2
            continue
        if pos + 4 > len(content):
            raise _Unparsed("JPEG segment truncated")
        length = struct.unpack(">H", content[pos + 2:pos + 4])[0]
        end = pos + 2 + length
        if length < 2 or end > len(content):
            raise _Unparsed("JPEG segment length out of range")
        if _jpeg_segment_kept(marker, content[pos + 4:end]):
            out += content[pos:end]
        pos, in_scan = end, marker == 0xDA  # SOS: its scan data follows
    raise _Unparsed("JPEG without EOI")


# ---- PNG -----------------------------------------------------------------------
def _strip_png(content: bytes) -> bytes:
    out, pos = bytearray(content[:8]), 8
    while pos < len(content):
        if pos + 12 > len(content):
            raise _Unparsed("PNG chunk truncated")
        length, kind = struct.unpack(">I4s", content[pos:pos + 8])
        end = pos + 12 + length
        if end > len(content):
            raise _Unparsed("PNG chunk length out of range")
        if kind not in PNG_DROPPED_CHUNKS:
            out += content[pos:end]
        pos = end
        if kind == b"IEND":
            return bytes(out)
    raise _Unparsed("PNG without IEND")


# ---- WebP ----------------------------------------------------------------------
def _strip_webp(content: bytes) -> bytes:
    if content[8:12] != b"WEBP":
        raise _Unparsed("not a WebP RIFF")
    body, pos = bytearray(b"WEBP"), 12
    while pos < len(content):
        if pos + 8 > len(content):
            raise _Unparsed("WebP chunk truncated")
        kind, length = content[pos:pos + 4], struct.unpack("<I", content[pos + 4:pos + 8])[0]
        end = pos + 8 + length + (length & 1)  # chunks are padded to even sizes
        if end > len(content):
            raise _Unparsed("WebP chunk length out of range")
        chunk = bytearray(content[pos:end])
        if kind == b"VP8X":
            chunk[8] &= ~0x0C & 0xFF  # the header no longer announces EXIF (0x08) or XMP (0x04)
        if kind not in WEBP_DROPPED_CHUNKS:
            body += chunk
        pos = end
    return b"RIFF" + struct.pack("<I", len(body)) + bytes(body)


# ---- GIF -----------------------------------------------------------------------
def _gif_sub_blocks_end(content: bytes, pos: int) -> int:
    while True:
        if pos >= len(content):
            raise _Unparsed("GIF sub-blocks truncated")
        size = content[pos]
        pos += 1 + size
        if size == 0:
            return pos


def _strip_gif(content: bytes) -> bytes:
    """Drops comment extensions and application extensions (XMP and the like) but the loop count."""
    flags = content[10]
    pos = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    out = bytearray(content[:pos])
    while pos < len(content):
        block = content[pos]
        if block == 0x3B:  # trailer
            return bytes(out + b"\x3b")
        if block == 0x21:
            label = content[pos + 1]
            end = _gif_sub_blocks_end(content, pos + 2)
            application = content[pos + 3:pos + 14] if label == 0xFF else b""
            if label != 0xFE and (label != 0xFF or application in GIF_KEPT_APPLICATIONS):
                out += content[pos:end]
            pos = end
        elif block == 0x2C:
            descriptor_flags = content[pos + 9]
            table = 3 * 2 ** ((descriptor_flags & 7) + 1) if descriptor_flags & 0x80 else 0
            end = _gif_sub_blocks_end(content, pos + 10 + table + 1)  # + LZW minimum code size
            out += content[pos:end]
            pos = end
        else:
            raise _Unparsed(f"GIF block 0x{block:02x} unknown")
    raise _Unparsed("GIF without trailer")


_STRIPPERS = ((b"\xff\xd8", _strip_jpeg), (b"\x89PNG\r\n\x1a\n", _strip_png), (b"RIFF", _strip_webp),
              (b"GIF87a", _strip_gif), (b"GIF89a", _strip_gif))

__all__ = ["minimise"]
