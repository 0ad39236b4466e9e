"""Generators for the fuzz suite: mutated images, random protobuf messages
and raw bytes, random JSON for the REST routes. Every generator takes a
random.Random, so a failing case is reproduced by its seed (printed on failure)."""
from __future__ import annotations

import base64
import io
import random
import struct
import zlib
from pathlib import Path

from google.protobuf import descriptor as pb_descriptor
from google.protobuf.message import Message
from PIL import Image

CALL_TIMEOUT = 60.0  # a call still unanswered after this counts as a hang
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "ICO")
INTERESTING_INTS = (0, 1, -1, 2**31 - 1, -2**31, 2**32 - 1, 2**53, 2**63 - 1, -2**63, 2**64 - 1, 255, 256, 65535)
INTERESTING_STRINGS = ("", " ", "%FF", "%00", "\x00", "../../etc/passwd", "a" * 5000, "ünïcødé", "😀", "\ud7ff",
                       "' OR 1=1 --", "<script>", "null", "-1", "9" * 40, "\u202e", "\n\r\t")


# ---- images -----------------------------------------------------------------
def seed_images(faces_dir: Path, max_side: int = 96) -> list[bytes]:
    """Real photos, made small (decoding stays cheap) and encoded in every format
    Pillow writes, accepted or not."""
    sources = sorted(faces_dir.glob("bbt/*/*1.png")) + sorted(faces_dir.glob("scenes/*.jpg"))[:2] \
        + sorted(faces_dir.glob("edge/*"))
    seeds = []
    for path in sources:
        try:
            image = Image.open(path)
            image.load()
        except Exception:  # noqa: BLE001 - an edge file Pillow cannot read is still a seed as bytes
            seeds.append(path.read_bytes()[:200_000])
            continue
        image.thumbnail((max_side, max_side))
        for fmt in FORMATS:
            converted = image.convert("RGBA" if fmt in ("PNG", "WEBP", "ICO") else "RGB")
            buffer = io.BytesIO()
            converted.save(buffer, format=fmt)
            seeds.append(buffer.getvalue())
    return seeds + [png_claiming(60_000, 60_000), png_claiming(40_000, 1), jpeg_claiming(6000, 6000)]


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (with a valid CRC)."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF)
    return bytes(data)


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose SOF header claims width x height (its data is for 16x16)."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (90, 140, 200)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four random edits: flips, interesting bytes, inserts, deletes,
    truncation, duplicated chunks, another file's header spliced in."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(8)
        position = rng.randrange(len(out)) if out else 0
        if kind == 0 and out:
            out[position] ^= 1 << rng.randrange(8)
        elif kind == 1 and out:
            out[position] = rng.choice((0x00, 0xFF, 0x7F, 0x80, 0x01, 0xFE))
        elif kind == 2:
            out[position:position] = rng.randbytes(rng.randint(1, 64))
        elif kind == 3 and out:
            del out[position:position + rng.randint(1, 256)]
        elif kind == 4:
            del out[rng.randint(0, len(out)):]
        elif kind == 5 and out:
            chunk = out[position:position + rng.randint(1, 512)]
            out[position:position] = chunk * rng.randint(1, 8)
        elif kind == 6 and len(out) > 32:
            # Early bytes hold headers and dimensions: hit them harder.
            spot = rng.randrange(min(64, len(out)))
            out[spot:spot + 2] = rng.randbytes(2)
        else:
            out[:8] = rng.choice((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0\x00\x10JF", b"GIF89a\x00\x00",
                                  b"BM\x00\x00\x00\x00\x00\x00", b"RIFF\x00\x00\x00\x00", b"II*\x00\x08\x00\x00\x00",
                                  b"\x00\x00\x01\x00\x01\x00\x00\x00"))
    return bytes(out)


# ---- protobuf -------------------------------------------------------------------
def random_string(rng: random.Random, max_len: int = 40) -> str:
    roll = rng.random()
    if roll < 0.3:
        return rng.choice(INTERESTING_STRINGS)
    if roll < 0.6:
        return "".join(chr(rng.randint(32, 126)) for _ in range(rng.randint(0, max_len)))
    return "".join(chr(rng.choice((rng.randint(0, 0xD7FF), rng.randint(0xE000, 0x10FFFF))))
                   for _ in range(rng.randint(0, max_len)))


def random_int(rng: random.Random, bits: int, signed: bool) -> int:
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
    value = rng.choice(INTERESTING_INTS) if rng.random() < 0.5 else rng.randint(-1000, 1000)
    return min(max(value, low), high)


_INT_BITS = {
    pb_descriptor.FieldDescriptor.TYPE_INT32: (32, True), pb_descriptor.FieldDescriptor.TYPE_SINT32: (32, True),
    pb_descriptor.FieldDescriptor.TYPE_SFIXED32: (32, True), pb_descriptor.FieldDescriptor.TYPE_INT64: (64, True),
    pb_descriptor.FieldDescriptor.TYPE_SINT64: (64, True), pb_descriptor.FieldDescriptor.TYPE_SFIXED64: (64, True),
    pb_descriptor.FieldDescriptor.TYPE_UINT32: (32, False), pb_descriptor.FieldDescriptor.TYPE_FIXED32: (32, False),
    pb_descriptor.FieldDescriptor.TYPE_UINT64: (64, False), pb_descriptor.FieldDescriptor.TYPE_FIXED64: (64, False),
}


def _random_scalar(field: pb_descriptor.FieldDescriptor, rng: random.Random, ids: list[str], images: list[bytes]):
    kind = field.type
    if kind in _INT_BITS:
        return random_int(rng, *_INT_BITS[kind])
    if kind == field.TYPE_ENUM:
        return rng.choice([v.number for v in field.enum_type.values] + [rng.randint(-5, 1000)])
    if kind in (field.TYPE_FLOAT, field.TYPE_DOUBLE):
        return rng.choice((0.0, -1.0, 1e300 if kind == field.TYPE_DOUBLE else 3e38, float("nan"), float("inf"),
                           rng.uniform(-10, 10)))
    if kind == field.TYPE_BOOL:
        return rng.random() < 0.5
    if kind == field.TYPE_STRING:
        return rng.choice(ids) if ids and rng.random() < 0.3 else random_string(rng)
    if kind == field.TYPE_BYTES:
        if images and rng.random() < 0.3:
            return mutate(rng.choice(images), rng)
        return rng.randbytes(rng.randint(0, 600))
    raise AssertionError(f"unhandled field type {kind}")


def random_message(message_class: type[Message], rng: random.Random, ids: list[str] = (),
                   images: list[bytes] = (), depth: int = 0) -> Message:
    """A message with a random subset of its fields set to random, often hostile, values."""
    message = message_class()
    for field in message.DESCRIPTOR.fields:
        if rng.random() < 0.4:
            continue
        count = rng.randint(0, 4) if field.is_repeated else 1
        for _ in range(count):
            if field.type == field.TYPE_MESSAGE:
                if depth >= 3 or field.message_type.GetOptions().map_entry:
                    continue
                value = random_message(message_class=_message_class(message, field), rng=rng, ids=ids,
                                       images=images, depth=depth + 1)
                if field.is_repeated:
                    getattr(message, field.name).append(value)
                else:
                    getattr(message, field.name).CopyFrom(value)
            else:
                value = _random_scalar(field, rng, list(ids), list(images))
                if field.is_repeated:
                    getattr(message, field.name).append(value)
                else:
                    setattr(message, field.name, value)
    return message


def _message_class(parent: Message, field: pb_descriptor.FieldDescriptor) -> type[Message]:
    if field.is_repeated:
        return type(getattr(parent, field.name).add())
    return type(getattr(parent, field.name))


def random_request_bytes(message_class: type[Message], rng: random.Random, ids: list[str],
                         images: list[bytes]) -> bytes:
    """Raw random bytes, a random message, or a random message with bytes flipped."""
    roll = rng.random()
    if roll < 0.35:
        return rng.randbytes(rng.randint(0, 300))
    data = random_message(message_class, rng, ids, images).SerializeToString()
    return mutate(data, rng) if roll < 0.6 and data else data


# ---- JSON ---------------------------------------------------------------------------
def random_json(rng: random.Random, depth: int = 0):
    roll = rng.randrange(8 if depth < 3 else 5)
    if roll == 0:
        return None
    if roll == 1:
        return rng.random() < 0.5
    if roll == 2:
        return rng.choice((rng.choice(INTERESTING_INTS), rng.uniform(-1e6, 1e6), 1e308))
    if roll in (3, 4):
        return random_string(rng)
    if roll == 5:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {random_string(rng, 12): random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def random_value_for(schema: dict, components: dict, rng: random.Random, ids: list[str], images: list[bytes],
                     depth: int = 0):
    """A value that mostly fits the OpenAPI schema (so requests reach the
    service), else anything."""
    if rng.random() < 0.15:
        return random_json(rng, depth)
    if "$ref" in schema:
        schema = components[schema["$ref"].rsplit("/", 1)[-1]]
    kind, fmt = schema.get("type"), schema.get("format", "")
    if kind == "object" or "properties" in schema:
        if depth > 3:
            return {}
        props = schema.get("properties", {})
        return {name: random_value_for(sub, components, rng, ids, images, depth + 1)
                for name, sub in props.items() if rng.random() < 0.7}
    if kind == "array":
        return [random_value_for(schema.get("items", {}), components, rng, ids, images, depth + 1)
                for _ in range(rng.randint(0, 3))]
    if kind == "string" and fmt == "bytes":
        if images and rng.random() < 0.5:
            return base64.b64encode(mutate(rng.choice(images), rng)).decode()
        return rng.choice((base64.b64encode(rng.randbytes(rng.randint(0, 100))).decode(), random_string(rng)))
    if kind == "string" and "enum" in schema:
        return rng.choice(schema["enum"] + [random_string(rng)])
    if kind == "string":
        return rng.choice(ids) if ids and rng.random() < 0.3 else random_string(rng)
    if kind in ("integer", "number"):
        return rng.choice(INTERESTING_INTS + (rng.uniform(-5, 5),))
    if kind == "boolean":
        return rng.random() < 0.5
    return random_json(rng, depth)
