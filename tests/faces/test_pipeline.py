"""The face pipeline on the shared real photos: detection, landmarks, chips,
embeddings, coordinates, and every way decoding can go wrong."""
from __future__ import annotations

import io
from itertools import combinations

import dlib
import numpy as np
import pytest
from PIL import Image

from tests.faces.conftest import encode, read
from visage.config import Config
from visage.faces import pipeline as pipeline_module
from visage.faces.pipeline import FacePipeline, ImageTooLarge, InvalidImage
from visage.faces.settings import FaceSettings

BBT_PEOPLE = ["amy", "bernadette", "howard", "leonard", "penny", "raj", "sheldon", "stuart"]


def bbt_crops(faces_dir):
    return sorted((faces_dir / "bbt").glob("*/*.png"))


def test_every_bbt_crop_yields_exactly_one_complete_face(pipeline, faces_dir):
    for path in bbt_crops(faces_dir):
        analyzed = pipeline.analyze(read(path))
        assert len(analyzed.faces) == 1, path.name
        face = analyzed.faces[0]
        left, top, right, bottom = face.box
        assert 0 <= left < right < analyzed.width and 0 <= top < bottom < analyzed.height
        assert len(face.landmarks) == 5
        assert all(left - 5 <= x <= right + 5 and top - 5 <= y <= bottom + 5 for x, y in face.landmarks)
        assert face.embedding.dtype == np.float32 and face.embedding.shape == (128,)
        assert Image.open(io.BytesIO(face.crop_jpeg)).size == (150, 150)
        assert analyzed.content_type == "image/png"


def test_embeddings_put_each_bbt_person_nearest_to_themselves(pipeline, faces_dir):
    paths = bbt_crops(faces_dir)
    people = [path.parent.name for path in paths]
    assert sorted(set(people)) == BBT_PEOPLE
    embeddings = np.stack([pipeline.analyze(read(path)).faces[0].embedding for path in paths])
    distances = np.linalg.norm(embeddings[:, None] - embeddings[None], axis=2)
    np.fill_diagonal(distances, np.inf)
    nearest_is_same_person = [people[i] == people[int(distances[i].argmin())] for i in range(len(paths))]
    assert np.mean(nearest_is_same_person) >= 0.9
    same = [distances[i, j] for i, j in combinations(range(len(paths)), 2) if people[i] == people[j]]
    other = [distances[i, j] for i, j in combinations(range(len(paths)), 2) if people[i] != people[j]]
    assert np.mean(same) < 0.6 < np.mean(other)  # dlib's documented same-person threshold


@pytest.mark.parametrize("name, expected", [("bbt1.jpg", 4), ("bbt2.jpg", 2), ("bbt3.jpg", 5),
                                            ("two_people.jpg", 2)])
def test_group_photos_yield_several_distinct_faces(pipeline, faces_dir, name, expected):
    faces = pipeline.analyze(read(faces_dir / "scenes" / name)).faces
    assert len(faces) >= min(expected, 2)
    assert len(faces) == expected
    assert [face.box for face in faces] == sorted((face.box for face in faces), key=lambda b: (b[0], b[1]))
    embeddings = np.stack([face.embedding for face in faces])
    assert all(np.linalg.norm(a - b) > 0.3 for a, b in combinations(embeddings, 2))


@pytest.mark.parametrize("name", ["32bit.png", "obama_partial_face.jpg", "obama_small.jpg"])
def test_edge_images_yield_a_face(pipeline, faces_dir, name):
    analyzed = pipeline.analyze(read(faces_dir / "edge" / name))
    assert len(analyzed.faces) == 1


def test_32bit_png_transparency_is_composited_not_dropped(pipeline, faces_dir):
    analyzed = pipeline.analyze(read(faces_dir / "edge" / "32bit.png"))
    assert (analyzed.content_type, analyzed.width, analyzed.height) == ("image/png", 626, 1200)


def test_exif_orientation_is_applied_before_detection(pipeline, faces_dir):
    original = Image.open(faces_dir / "presidents" / "obama" / "obama2.jpg")
    upright = pipeline.analyze(encode(original, quality=95))
    # Store the pixels rotated and say so in EXIF (as cameras do): the pipeline must undo it.
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    rotated = encode(original.transpose(Image.Transpose.ROTATE_90), quality=95, exif=exif.tobytes())
    turned_back = pipeline.analyze(rotated)
    assert (turned_back.width, turned_back.height) == (upright.width, upright.height)
    assert len(turned_back.faces) == 1
    assert np.allclose(turned_back.faces[0].box, upright.faces[0].box, atol=8)


def test_large_images_are_detected_downscaled_but_boxed_in_original_pixels(pipeline, faces_dir):
    scene = Image.open(faces_dir / "scenes" / "bbt1.jpg")
    normal = pipeline.analyze(encode(scene, quality=95))
    doubled_image = scene.resize((scene.width * 2, scene.height * 2), Image.Resampling.BICUBIC)
    assert max(doubled_image.size) > pipeline.settings.detect_max_side
    doubled = pipeline.analyze(encode(doubled_image, quality=95))
    assert (doubled.width, doubled.height) == (scene.width * 2, scene.height * 2)
    assert len(doubled.faces) == len(normal.faces)
    for big, small in zip(doubled.faces, normal.faces):
        # HOG boxes snap to its pyramid scales: compare centres and sizes, 15% of the face size.
        size = 2 * (small.box[2] - small.box[0])
        assert np.allclose(center(big.box), center(small.box) * 2, atol=0.15 * size)
        assert abs((big.box[2] - big.box[0]) - size) < 0.15 * size
        assert np.allclose(big.landmarks, np.array(small.landmarks) * 2, atol=12)
        assert np.linalg.norm(big.embedding - small.embedding) < 0.25  # same person, same face


@pytest.fixture
def decoded(monkeypatch) -> list[tuple[int, int]]:
    """The size of every image the pipeline decodes, in order."""
    sizes: list[tuple[int, int]] = []
    real_decode = pipeline_module.decode_image

    def recording_decode(*args, **kwargs):
        decoded = real_decode(*args, **kwargs)
        sizes.append(decoded.image.size)
        return decoded

    monkeypatch.setattr(pipeline_module, "decode_image", recording_decode)
    return sizes


def test_a_huge_jpeg_is_decoded_only_as_large_as_detection_needs(pipeline, faces_dir, decoded):
    photo = Image.open(faces_dir / "presidents" / "obama" / "obama1.jpg")  # 910x1137, one face
    normal = pipeline.analyze(encode(photo, quality=95))
    decoded.clear()
    huge = photo.resize((photo.width * 5, photo.height * 5), Image.Resampling.BICUBIC)  # 4550x5685
    analyzed = FacePipeline(Config(max_image_bytes=50_000_000), FaceSettings()).analyze(encode(huge, quality=90))
    # Half size (the largest DCT reduction keeping the long side >= detect_max_side, 1600);
    # the face is large enough there for a full-resolution chip, so there is no second decode.
    assert decoded == [(2275, 2843)]
    assert (analyzed.width, analyzed.height) == (4550, 5685)  # the caller still sees original pixels
    assert len(analyzed.faces) == 1
    big, small = analyzed.faces[0], normal.faces[0]
    size = 5 * (small.box[2] - small.box[0])
    assert np.allclose(center(big.box), center(small.box) * 5, atol=0.15 * size)
    assert np.allclose(big.landmarks, np.array(small.landmarks) * 5, atol=0.05 * size)
    assert np.linalg.norm(big.embedding - small.embedding) < 0.25  # same person, same face


def test_a_face_too_small_in_the_reduced_decode_gets_a_finer_one(faces_dir, decoded):
    scene = Image.open(faces_dir / "scenes" / "bbt3.jpg")  # 594x383, five faces of 51-63 px
    canvas = Image.new("RGB", (scene.width * 8, scene.height * 8), "white")
    canvas.paste(scene.resize((scene.width * 3, scene.height * 3), Image.Resampling.BICUBIC), (0, 0))
    analyzed = FacePipeline(Config(max_image_bytes=50_000_000), FaceSettings()).analyze(encode(canvas, quality=90))
    assert len(analyzed.faces) == 5
    # Found at 1/2 size (2376x1532); faces of ~150-190 px are under a 150 px chip there: decoded again in full.
    assert decoded == [(2376, 1532), (4752, 3064)]


def test_faces_too_small_for_the_downscaled_detection_are_found_at_full_size(faces_dir, decoded):
    """A large photo whose small faces the 1600 px detection cannot see: the five faces of
    bbt3 (51-63 px there) enlarged 1.6x (~80-100 px) beside a close-up portrait, in a
    4800 px wide photo. Detected at 1600 px (a third), the faces under 120 px are below the
    detector's 40 px; face_recognition, detecting at full size, finds all six. So does Visage."""
    scene = Image.open(faces_dir / "scenes" / "bbt3.jpg")
    scene = scene.resize((round(scene.width * 1.6), round(scene.height * 1.6)), Image.Resampling.LANCZOS)
    portrait = Image.open(faces_dir / "presidents" / "obama" / "obama1.jpg").convert("RGB")
    portrait = portrait.resize((portrait.width * 2, portrait.height * 2), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (4800, portrait.height), "white")
    canvas.paste(scene, (100, 200))
    canvas.paste(portrait, (canvas.width - portrait.width, 0))
    content = encode(canvas, quality=92)
    # The known faces: dlib's HOG on the full-size photo, as face_recognition runs it.
    truth = [(r.left(), r.top(), r.right(), r.bottom())
             for r in dlib.get_frontal_face_detector()(np.asarray(Image.open(io.BytesIO(content))), 1)]
    assert len(truth) == 6

    analyzed = FacePipeline(Config(max_image_bytes=50_000_000), FaceSettings()).analyze(content)

    assert len(analyzed.faces) == 6
    for box in truth:  # the same face: boxes overlap as bench_vs_fr counts it (HOG boxes snap to its scales)
        assert max(iou(box, face.box) for face in analyzed.faces) > 0.5
    assert decoded == [(2400, 1137), (4800, 2274)]  # a half-size decode, then the full one


def iou(a, b) -> float:
    width, height = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0, width) * max(0, height)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_only_jpeg_is_decoded_reduced():
    sizes = {}
    for fmt in ("JPEG", "PNG", "WEBP"):
        content = encode(Image.new("RGB", (6400, 3200), "grey"), fmt)
        header = Image.open(io.BytesIO(content))
        reduction = pipeline_module.reduction_for(header, 1600)
        decoded = pipeline_module.decode_image(content, 50_000_000, 40_000_000, reduction=reduction)
        sizes[fmt] = (reduction, decoded.image.size, decoded.full_size)
    assert sizes == {"JPEG": (4, (1600, 800), (6400, 3200)), "PNG": (1, (6400, 3200), (6400, 3200)),
                     "WEBP": (1, (6400, 3200), (6400, 3200))}
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": upright, the reduced image and the full size turn alike
    decoded = pipeline_module.decode_image(encode(Image.new("RGB", (6400, 3200), "grey"), exif=exif.tobytes()),
                                           50_000_000, 40_000_000, reduction=4)
    assert (decoded.image.size, decoded.full_size) == ((800, 1600), (3200, 6400))


def center(box) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def test_minimum_face_size_drops_smaller_faces(faces_dir):
    strict = FacePipeline(Config(), FaceSettings(min_face_size=200))
    assert strict.analyze(read(faces_dir / "scenes" / "bbt1.jpg")).faces == []
    assert len(strict.analyze(read(faces_dir / "presidents" / "biden" / "biden2.jpg")).faces) == 1


def test_image_without_a_face_yields_no_faces(pipeline):
    analyzed = pipeline.analyze(encode(Image.new("RGB", (320, 240), (90, 140, 200)), "PNG"))
    assert analyzed.faces == [] and (analyzed.width, analyzed.height) == (320, 240)


def test_cnn_detector_is_selectable_from_the_environment(monkeypatch, faces_dir):
    monkeypatch.setenv("VISAGE_DETECTOR", "cnn")
    monkeypatch.setenv("VISAGE_DETECTOR_UPSAMPLE", "0")
    cnn = FacePipeline(Config())
    assert cnn.detector.name == "cnn"
    assert len(cnn.analyze(read(faces_dir / "presidents" / "obama" / "obama-480p.jpg")).faces) == 1


def test_unknown_detector_name_is_refused(monkeypatch):
    monkeypatch.setenv("VISAGE_DETECTOR", "magic")
    with pytest.raises(ValueError, match="unknown VISAGE_DETECTOR 'magic'"):
        FacePipeline(Config())


# ---- bad input ---------------------------------------------------------------

def test_empty_bytes_are_invalid(pipeline):
    with pytest.raises(InvalidImage, match="empty"):
        pipeline.analyze(b"")


def test_bytes_that_are_no_image_are_invalid(pipeline):
    with pytest.raises(InvalidImage, match="not an image"):
        pipeline.analyze(b"%PDF-1.7 definitely not a picture" * 10)


def test_truncated_jpeg_is_invalid(pipeline, faces_dir):
    content = read(faces_dir / "scenes" / "bbt1.jpg")
    with pytest.raises(InvalidImage, match="truncated"):
        pipeline.analyze(content[: len(content) // 2])


def test_image_over_the_byte_limit_is_too_large(faces_dir):
    small_limit = FacePipeline(Config(max_image_bytes=100_000), FaceSettings())
    with pytest.raises(ImageTooLarge, match="256,532 bytes; the limit is 100,000"):
        small_limit.analyze(read(faces_dir / "scenes" / "bbt1.jpg"))


def test_decompression_bomb_is_refused_before_decoding(pipeline):
    bomb = encode(Image.new("1", (8000, 8000)), "PNG")  # 64 Mpx in a few KB
    assert len(bomb) < 100_000
    with pytest.raises(InvalidImage, match="8000x8000 = 64,000,000 pixels.*decompression bomb"):
        pipeline.analyze(bomb)


def test_the_full_size_look_runs_at_the_lowest_cpu_priority(pipeline, monkeypatch):
    """Issue 25, finding 8: a faceless 6000x6000 JPEG costs ~10 s of CPU in the full-size look
    (10x what admission charges it) and slowed every caller's images 2x and more. That look now
    yields the CPU to other work (nice 19, this thread only); the worker's own priority stays."""
    import os
    import threading

    seen = []
    look = pipeline.detector.detect_full_size

    def recording(rgb):
        seen.append((rgb.shape[:2], os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        return look(rgb)

    monkeypatch.setattr(pipeline.detector, "detect_full_size", recording)
    faceless = Image.effect_noise((2400, 1800), 40).convert("RGB")  # larger than detection's 1600 px: looked at again
    assert pipeline.analyze(encode(faceless, quality=85)).faces == []
    assert seen == [((1800, 2400), 19)]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == 0
