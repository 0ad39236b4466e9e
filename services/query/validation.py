"""Checks on what callers send, each raising InvalidArgument with a message
that says what was wrong (→ INVALID_ARGUMENT)."""
from __future__ import annotations

import unicodedata

from visage.v1 import query_pb2
from visage.v1 import resources_pb2 as pb

MAX_DISPLAY_NAME_CHARS = 200
MAX_ID_CHARS = 256
# Control characters and line/paragraph separators break every one-line display.
FORBIDDEN_CATEGORIES = {"Cc", "Zl", "Zp"}
LABEL_VERDICTS = (pb.VERDICT_BELONGS, pb.VERDICT_NOT_BELONGS)


class InvalidArgument(ValueError):
    pass


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
    """Trimmed; 1-200 characters; no control characters. Anything else
    (including markup) is stored as typed: escaping is the display's job."""
    name = _one_line_text(value, "display_name", MAX_DISPLAY_NAME_CHARS)
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
