"""Upright face crops (issue 28): GetFaceCrop with `upright` cuts the face from its
photo as people see it (EXIF-upright, colour, a margin around the box, no black
wedges), cached like thumbnails; an erasure empties the cache of what went, on the
replica that erased at once and on the others from the ERASED event."""
from __future__ import annotations

import hashlib
import io

import grpc
import numpy as np
import pytest
from PIL import Image

from visage.store.records import FaceRecord, ImageRecord
from visage.v1 import query_pb2
from visage.v1 import resources_pb2 as pb
from visage_query.thumbnails import UPRIGHT_CROP_MARGIN, UPRIGHT_CROP_SIZE, ThumbnailCache

from query_calls import rpc_error
from waiting import wait_until

ORIENTATION = 0x0112
ROTATED_90_CW = 6  # EXIF: the pixels are stored turned; a viewer turns them 90° clockwise


def stored_sideways(store, faces_dir, box) -> tuple[FaceRecord, Image.Image]:
    """The bbt1 scene stored turned on its side with an EXIF orientation that puts it
    upright (as a phone writes it); its face at `box`, in upright pixels. Returns the face
    and the photo as people see it."""
    upright = Image.open(faces_dir / "scenes" / "bbt1.jpg").convert("RGB")
    exif = Image.Exif()
    exif[ORIENTATION] = ROTATED_90_CW
    buffer = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buffer, "JPEG", quality=95, exif=exif)
    content = buffer.getvalue()
    image_id = hashlib.sha256(content).hexdigest()
    face = FaceRecord(face_id=f"{image_id[:24]}-0", image_id=image_id, index=0, box=box,
                      landmarks=[(0.0, 0.0)] * 5, embedding=np.zeros(128, np.float32), crop_jpeg=b"\xff\xd8chip")
    store.put_image(ImageRecord(image_id, "sideways.jpg", "image/jpeg", upright.width, upright.height, len(content),
                                1, pb.IMAGE_STATUS_FACES_FOUND), content, [face])
    return face, upright


def upright_crop(stub, face_id: str) -> Image.Image:
    body = stub.GetFaceCrop(query_pb2.GetFaceCropRequest(face_id=face_id, upright=True))
    assert body.content_type == "image/jpeg"
    return Image.open(io.BytesIO(body.data)).convert("RGB")


def test_an_upright_crop_is_the_face_cut_from_the_photo_as_seen_with_a_margin(stub, store, faces_dir):
    box = (700, 150, 820, 290)  # 120 x 140 in upright pixels
    face, photo = stored_sideways(store, faces_dir, box)
    crop = upright_crop(stub, face.face_id)

    side = round(140 * (1 + 2 * UPRIGHT_CROP_MARGIN))  # the box's longer side and a margin all round
    assert crop.width == crop.height == min(side, UPRIGHT_CROP_SIZE)
    centre_x, centre_y = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    expected = photo.crop((round(centre_x - side / 2), round(centre_y - side / 2),
                           round(centre_x + side / 2), round(centre_y + side / 2))).resize(crop.size)
    difference = np.abs(np.asarray(crop, np.int16) - np.asarray(expected, np.int16)).mean()
    assert difference < 8, f"not the upright photo around the box: mean difference {difference:.1f}"
    turned = expected.transpose(Image.Transpose.ROTATE_90)  # what a crop that ignored EXIF would resemble
    assert np.abs(np.asarray(crop, np.int16) - np.asarray(turned, np.int16)).mean() > difference * 3
    # Colour, and no black wedges in the corners (the aligned chip has both problems).
    pixels = np.asarray(crop, np.int16)
    assert np.abs(pixels[..., 0] - pixels[..., 2]).mean() > 3
    assert all(pixels[y, x].sum() > 30 for y in (0, -1) for x in (0, -1))

    # Cached: the same bytes again; the aligned chip is still what a plain request gets.
    again = stub.GetFaceCrop(query_pb2.GetFaceCropRequest(face_id=face.face_id, upright=True))
    assert again.data == stub.GetFaceCrop(query_pb2.GetFaceCropRequest(face_id=face.face_id, upright=True)).data
    assert stub.GetFaceCrop(query_pb2.GetFaceCropRequest(face_id=face.face_id)).data == face.crop_jpeg


def test_a_face_at_the_edge_is_cut_inside_the_photo(stub, store, faces_dir):
    face, photo = stored_sideways(store, faces_dir, (0, 0, 90, 100))  # the top-left corner
    crop = upright_crop(stub, face.face_id)
    side = round(100 * (1 + 2 * UPRIGHT_CROP_MARGIN))
    assert crop.size == (side, side)  # shifted into the photo, not padded with black
    expected = photo.crop((0, 0, side, side))
    assert np.abs(np.asarray(crop, np.int16) - np.asarray(expected, np.int16)).mean() < 8


def test_erasure_empties_the_crop_cache(query_service, stub, store, faces_dir):
    cache = query_service.drain.__self__.thumbnails  # the servicer's cache (drain is its close)
    face, _ = stored_sideways(store, faces_dir, (700, 150, 820, 290))
    upright_crop(stub, face.face_id)
    stub.GetImageContent(query_pb2.GetImageContentRequest(image_id=face.image_id, size=160))
    assert face.face_id in cache and face.image_id in cache
    stub.DeleteImage(query_pb2.DeleteImageRequest(image_id=face.image_id))
    assert face.face_id not in cache and face.image_id not in cache  # the replica that erased: at once
    error = rpc_error(stub.GetFaceCrop, query_pb2.GetFaceCropRequest(face_id=face.face_id, upright=True))
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_an_erasure_by_another_replica_empties_the_cache_from_its_event(query_service, stub, store, faces_dir):
    cache = query_service.drain.__self__.thumbnails
    face, _ = stored_sideways(store, faces_dir, (300, 200, 400, 320))
    upright_crop(stub, face.face_id)
    assert face.face_id in cache
    store.delete_image(face.image_id)  # as another query replica would: only the ERASED event tells this one
    wait_until(lambda: face.face_id not in cache and face.image_id not in cache, "the cache forgets the erased face")


def test_a_crop_made_while_its_image_is_erased_is_not_kept(store, faces_dir):
    """A request that read the photo just before the erasure finishes after it: what it made
    is answered to that request but not kept in the cache."""
    cache = ThumbnailCache()
    face, photo = stored_sideways(store, faces_dir, (700, 150, 820, 290))
    content = store.get_image_content(face.image_id)

    def load_then_erased() -> bytes:
        cache.forget([face.image_id], [face.face_id])  # the erasure lands while the crop is made
        return content
    assert cache.upright_crop(face.image_id, face.face_id, face.box, photo.size, load_then_erased)[:2] == b"\xff\xd8"
    assert face.face_id not in cache and face.image_id not in cache
