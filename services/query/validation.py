"""Checks on what callers send, each raising InvalidArgument with a message
that says what was wrong (→ INVALID_ARGUMENT)."""
from __future__ import annotations

import re
import unicodedata

from visage.errors import InvalidArgument
from visage.v1 import query_pb2
from visage.v1 import resources_pb2 as pb

MAX_DISPLAY_NAME_CHARS = 200
MAX_ID_CHARS = 256
# Control characters and line/paragraph separators break every one-line display.
FORBIDDEN_CATEGORIES = {"Cc", "Zl", "Zp"}
LABEL_VERDICTS = (pb.VERDICT_BELONGS, pb.VERDICT_NOT_BELONGS)
# Embedding, override and isolate controls (U+202A-202E, U+2066-2069) reorder what
# follows them on screen: a name could display as somebody else's. Removed.
BIDI_CONTROLS = dict.fromkeys([*range(0x202A, 0x202F), *range(0x2066, 0x206A)])
MAX_BATCH_LABELS = 1000
MAX_MERGE_SOURCES = 100
MAX_SAMPLE_FACES = 50
THUMBNAIL_SIZES = (16, 2048)


def required_id(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument(f"{field} is required")
    if len(value) > MAX_ID_CHARS:
        raise InvalidArgument(f"{field} is {len(value)} characters; ids are at most {MAX_ID_CHARS}")
    return value


def _one_line_text(value: str, field: str, max_chars: int) -> str:
    text = value.strip()
    if len(text) > max_chars:
        raise InvalidArgument(f"{field} is {len(text)} characters; the limit is {max_chars}")
    for position, char in enumerate(text):
        if unicodedata.category(char) in FORBIDDEN_CATEGORIES:
            raise InvalidArgument(
                f"{field} contains a control character (U+{ord(char):04X} at position {position}); "
                "use printable text")
    return text


def display_name(value: str) -> str:
    """Normalised (NFC, bidi overrides and isolates removed, runs of spaces made
    one), trimmed; 1-200 characters; no control characters. Anything else
    (including markup) is stored as typed: escaping is the display's job."""
    value = unicodedata.normalize("NFC", value).translate(BIDI_CONTROLS)
    name = re.sub(r"\s{2,}", " ", _one_line_text(value, "display_name", MAX_DISPLAY_NAME_CHARS))
    if not name:
        raise InvalidArgument("display_name is required (1-200 characters, not only spaces)")
    return name


def verdict(value: int) -> int:
    if value not in LABEL_VERDICTS:
        raise InvalidArgument(f"verdict must be VERDICT_BELONGS or VERDICT_NOT_BELONGS, got {_enum_name(pb.Verdict, value)}")
    return value


def face_kind(value: int) -> int:
    if value == query_pb2.FACE_KIND_UNSPECIFIED:
        return query_pb2.FACE_KIND_LABELLED
    if value not in query_pb2.FaceKind.values():
        raise InvalidArgument(f"kind {value} is not a FaceKind (LABELLED, PREDICTED or REJECTED)")
    return value


def event_types(values: list[int]) -> frozenset[int]:
    """The types to pass through; empty means every type."""
    for value in values:
        if value == pb.EVENT_TYPE_UNSPECIFIED or value not in pb.EventType.values():
            raise InvalidArgument(f"types holds {_enum_name(pb.EventType, value)}, which is not an event type")
    return frozenset(values)


def _enum_name(enum, value: int) -> str:
    try:
        return enum.Name(value)
    except ValueError:
        return str(value)


def batch_labels(labels) -> list[tuple[str, int]]:
    """(face_id, verdict) pairs of a BatchLabelFaces request: 1-1000, each face once."""
    if not labels:
        raise InvalidArgument("labels is required (1-1000 faces)")
    if len(labels) > MAX_BATCH_LABELS:
        raise InvalidArgument(f"labels holds {len(labels)} faces; at most {MAX_BATCH_LABELS} per request")
    pairs, seen = [], set()
    for position, label in enumerate(labels):
        face_id = required_id(label.face_id, f"labels[{position}].face_id")
        if face_id in seen:
            raise InvalidArgument(f"labels[{position}]: face {face_id!r} appears twice")
        seen.add(face_id)
        pairs.append((face_id, verdict(label.verdict)))
    return pairs


def merge_sources(source_ids, persona_id: str) -> list[str]:
    """The personas to merge into persona_id: 1-100, distinct, not persona_id itself."""
    if not source_ids:
        raise InvalidArgument("source_persona_ids is required (the personas to merge into persona_id)")
    if len(source_ids) > MAX_MERGE_SOURCES:
        raise InvalidArgument(f"source_persona_ids holds {len(source_ids)} personas; at most {MAX_MERGE_SOURCES}")
    sources = [required_id(source, "source_persona_ids") for source in dict.fromkeys(source_ids)]
    if persona_id in sources:
        raise InvalidArgument("a persona cannot be merged into itself: remove persona_id from source_persona_ids")
    return sources


def sample_size(value: int, default: int = 6) -> int:
    if value < 0 or value > MAX_SAMPLE_FACES:
        raise InvalidArgument(f"sample_size must be between 0 and {MAX_SAMPLE_FACES}, got {value}")
    return value or default


def thumbnail_size(value: int) -> int:
    """0 = the original; else the longest side of the thumbnail."""
    low, high = THUMBNAIL_SIZES
    if value and not low <= value <= high:
        raise InvalidArgument(f"size must be 0 (the original) or between {low} and {high} pixels, got {value}")
    return value


def search_query(value: str) -> str:
    return _one_line_text(value, "query", MAX_DISPLAY_NAME_CHARS)
