"""Data minimisation at ingest (visage.faces.metadata): what is stored keeps the
pixels and loses every metadata block; a rotated photo is stored upright."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from visage.faces.metadata import minimise

GPS_IFD, ORIENTATION, MAKE = 0x8825, 0x0112, 0x010F
SECRET = "Secret Street 221b"


def photo(size=(64, 48)) -> Image.Image:
    pixels = np.random.default_rng(3).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def gps_exif(orientation: int = 1) -> bytes:
    exif = Image.Exif()
    exif[MAKE] = "SpyCam"
    exif[ORIENTATION] = orientation
    gps = exif.get_ifd(GPS_IFD)
    gps.update({1: "N", 2: (51.0, 30.0, 12.5), 3: "W", 4: (0.0, 7.0, 39.0), 0x1B: SECRET.encode()})
    return exif.tobytes()


def jpeg_with_gps(orientation: int = 1) -> bytes:
    buffer = io.BytesIO()
    photo().save(buffer, "JPEG", exif=gps_exif(orientation), comment=SECRET.encode(), quality=90)
    return buffer.getvalue()


def assert_no_metadata(content: bytes) -> None:
    assert SECRET.encode() not in content and b"SpyCam" not in content and b"Exif\0\0" not in content
    with Image.open(io.BytesIO(content)) as image:
        assert dict(image.getexif()) == {}
        assert "comment" not in image.info and "exif" not in image.info


def test_jpeg_loses_exif_gps_and_comment_and_keeps_its_pixels_bit_exact():
    original = jpeg_with_gps()
    with Image.open(io.BytesIO(original)) as image:
        assert image.getexif().get_ifd(GPS_IFD)  # the fixture really carries GPS
    stripped = minimise(original)
    assert_no_metadata(stripped)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(stripped))), np.asarray(Image.open(io.BytesIO(original))))
    assert minimise(stripped) == stripped  # deterministic: the same upload maps to the same image id


def test_rotated_jpeg_is_stored_upright_without_metadata():
    stripped = minimise(jpeg_with_gps(orientation=6))  # 6: rotate 90° clockwise to view
    assert_no_metadata(stripped)
    assert Image.open(io.BytesIO(stripped)).size == (48, 64)


def test_png_text_and_exif_chunks_go():
    info = PngImagePlugin.PngInfo()
    info.add_text("Location", SECRET)
    info.add_itxt("Author", SECRET)
    buffer = io.BytesIO()
    photo().save(buffer, "PNG", pnginfo=info, exif=gps_exif())
    stripped = minimise(buffer.getvalue())
    assert_no_metadata(stripped)
    assert Image.open(io.BytesIO(stripped)).text == {}
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(stripped))), np.asarray(photo()))


def test_webp_exif_and_xmp_go():
    buffer = io.BytesIO()
    photo().save(buffer, "WEBP", exif=gps_exif(), xmp=f"<x:xmpmeta>{SECRET}</x:xmpmeta>".encode(), lossless=True)
    stripped = minimise(buffer.getvalue())
    assert_no_metadata(stripped)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(stripped)).convert("RGB")), np.asarray(photo()))


def test_gif_comment_goes():
    buffer = io.BytesIO()
    photo().convert("P").save(buffer, "GIF", comment=SECRET.encode())
    stripped = minimise(buffer.getvalue())
    assert_no_metadata(stripped)
    assert Image.open(io.BytesIO(stripped)).size == (64, 48)


@pytest.mark.parametrize("content", [b"", b"not an image at all", jpeg_with_gps()[:200]])
def test_what_is_no_image_is_left_for_the_pipeline_to_refuse(content):
    assert minimise(content) == content


def test_jpeg_with_fill_bytes_before_its_end_marker_is_parsed_not_reencoded():
    original = jpeg_with_gps()
    assert original.endswith(b"\xff\xd9")
    padded = original[:-2] + b"\xff\xff\xd9" + b"trailing secret " + SECRET.encode()
    stripped = minimise(padded)
    assert_no_metadata(stripped)
    assert stripped.endswith(b"\xff\xd9")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(stripped))), np.asarray(Image.open(io.BytesIO(original))))
