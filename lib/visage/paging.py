"""Opaque page tokens and page sizes for every List* call (query and trainer).

A token is urlsafe base64 of a small JSON object: the list it belongs to (its
"scope", e.g. "images" or "persona-faces/<id>/PREDICTED") and a position of
integers. The scope check turns a token pasted into the wrong list into a clear
INVALID_ARGUMENT instead of a silently wrong page.
"""
from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500
MAX_TOKEN_CHARS = 1024
# Positions are offsets or counts; stores keep them in signed 64-bit integers
# (SQLite, Cassandra bigint), so a forged token may not name one beyond.
MAX_POSITION = 2**62


class InvalidPageRequest(ValueError):
    """A page size or page token the caller must fix (→ INVALID_ARGUMENT)."""


def page_size(requested: int, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE) -> int:
    """0 means the default; above the maximum is coerced down (AIP-158)."""
    if requested < 0:
        raise InvalidPageRequest(f"page_size must be between 0 and {maximum}, got {requested}")
    if requested == 0:
        return default
    return min(requested, maximum)


def _encode(scope: str, field: str, value: list) -> str:
    payload = json.dumps({"s": scope, field: value}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


def _decode(token: str, scope: str, field: str):
    """The value a token of this scope carries under `field` (unchecked)."""
    if len(token) > MAX_TOKEN_CHARS:
        raise InvalidPageRequest("page_token is not a token this list issued (too long)")
    try:
        payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        value = payload[field]
        token_scope = payload["s"]
    except (binascii.Error, ValueError, TypeError, KeyError):
        raise InvalidPageRequest("page_token is malformed; pass back a next_page_token unchanged") from None
    if token_scope != scope:
        raise InvalidPageRequest("page_token belongs to a different list or query; start again without it")
    return value


def encode_token(scope: str, position: list[int]) -> str:
    return _encode(scope, "p", position)


def decode_token(token: str, scope: str, length: int) -> list[int]:
    """The position a token names, or [0] * length for the first page."""
    if not token:
        return [0] * length
    position = _decode(token, scope, "p")
    valid = (isinstance(position, list) and len(position) == length
             and all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n < MAX_POSITION for n in position))
    if not valid:
        raise InvalidPageRequest("page_token holds an invalid position; pass back a next_page_token unchanged")
    return position


def offset_list(scope: str, request, fetch: Callable[[int, int], tuple[list, bool]],
                default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE) -> tuple[list, str]:
    """One page of an offset-paged List* call: (items, next_page_token).
    `request` carries page_size and page_token; `fetch(offset, size)` returns
    the page's items and whether more follow."""
    size = page_size(request.page_size, default, maximum)
    offset, = decode_token(request.page_token, scope, 1)
    items, more = fetch(offset, size)
    return items, encode_token(scope, [offset + size]) if more else ""


def encode_key_token(scope: str, key: list) -> str:
    """A cursor token: the last key of a page (numbers and strings) instead of an offset,
    for lists read through an index (exact however writes interleave; nothing is skipped over)."""
    return _encode(scope, "k", key)


def decode_key_token(token: str, scope: str, types: tuple[type, ...]) -> list | None:
    """The key a cursor token names (None for the first page); each part of the type given
    (an int part also reads as a float part)."""
    if not token:
        return None
    key = _decode(token, scope, "k")

    def fits(part, kind: type) -> bool:
        if isinstance(part, bool):
            return False
        if kind is float:
            return isinstance(part, (int, float)) and abs(part) < MAX_POSITION
        if kind is int:
            return isinstance(part, int) and 0 <= part < MAX_POSITION
        return isinstance(part, kind)
    if not (isinstance(key, list) and len(key) == len(types) and all(map(fits, key, types))):
        raise InvalidPageRequest("page_token holds an invalid position; pass back a next_page_token unchanged")
    return key
