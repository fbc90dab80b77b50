"""Decoding with the guarantees the rest of the protocol relies on.

orjson does the work. Two of its behaviours need guarding: it reads integers outside the
64-bit range as floats, silently (an id of 2**64 would come back as another id, and the
reply would never match), and it nests up to 1024 levels, deeper than a request needs (and
deeper than orjson will encode again: its encoder stops at 255). Both guards work on the
raw bytes with C-speed passes (translate, count, replace) and only look closer when a cheap
test says they might have to.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from spark.errors import ParseError, RequestTooLargeError

#: What orjson reads (and writes) as an exact int.
INT_MIN = -(2**63)
INT_MAX = 2**64 - 1

NOT_64_BIT = "integer outside the 64-bit range"
ORJSON_MAX_DEPTH = 1024

# One translate feeds both cheap tests: digits become "0" (any integer outside the range
# above has a run of at least 19), container openers become "[", the rest a space.
_SKETCH_MAP = bytes(0x30 if 0x30 <= i <= 0x39 else 0x5B if i in b"[{" else 0x20 for i in range(256))
_DIGIT_RUN = b"0" * 19
# Skips whole strings so digits inside them are ignored; captures integer tokens (no
# fraction, no exponent, not part of one) of 19+ digits. Only run on JSON orjson accepted.
_WIDE_INT = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|(?<![\d.eE+\-])(-?\d{19,})(?![\d.eE])', re.S)

# Keep only what shapes the nesting: brackets (both kinds folded into one) and quotes.
_BRACKET_MAP = bytes.maketrans(b"{}", b"[]")
_NOT_STRUCTURAL = bytes(i for i in range(256) if i not in b'[]{}"')


def load(data: bytes | bytearray | memoryview | str, max_depth: int | None) -> Any:
    """Decode one JSON document, raising `ParseError` or `RequestTooLargeError`.

    `max_depth` counts containers from the top one (a bare request object is depth 1, a
    batch is 1 and its requests 2); None leaves only orjson's own limit of 1024.
    """
    if type(data) is not bytes:
        if isinstance(data, str):
            try:
                data = data.encode()
            except UnicodeEncodeError as exc:  # lone surrogates
                raise ParseError() from exc
        elif isinstance(data, bytearray | memoryview):
            data = bytes(data)
        else:
            raise TypeError(f"expected bytes or str, got {type(data).__name__}")
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if str(exc).startswith("depth limit"):
            limit = ORJSON_MAX_DEPTH if max_depth is None else min(max_depth, ORJSON_MAX_DEPTH)
            raise _too_deep(limit) from exc
        raise ParseError() from exc
    sketch = data.translate(_SKETCH_MAP)
    if _DIGIT_RUN in sketch and _has_wide_int(data):
        raise ParseError(data={"reason": NOT_64_BIT})
    # Fewer openers than the limit (strings included) cannot nest past it.
    if max_depth is not None and sketch.count(b"[") > max_depth and _deeper_than(data, max_depth):
        raise _too_deep(max_depth)
    return doc


def _too_deep(max_depth: int) -> RequestTooLargeError:
    return RequestTooLargeError("Request nested too deeply", data={"max_depth": max_depth})


def _has_wide_int(data: bytes) -> bool:
    for match in _WIDE_INT.finditer(data):
        token = match.group(1)
        if token is not None and not INT_MIN <= int(token) <= INT_MAX:
            return True
    return False


def _deeper_than(data: bytes, max_depth: int) -> bool:
    """Whether valid JSON `data` nests containers more than `max_depth` deep.

    Never recursive (a recursive walk is what turns hostile input into RecursionError).
    """
    if b"\\" in data:
        # Left to right, pairs first: what remains of `\"` is exactly the escaped quotes.
        data = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    seq = data.translate(_BRACKET_MAP, _NOT_STRUCTURAL)
    if b'"' in seq:
        # Dropping two adjacent quotes keeps every later quote's open/close role, so this
        # removes strings with no bracket inside at C speed; the rest are cut out by split.
        seq = seq.replace(b'""', b"")
        if b'"' in seq:
            seq = b"".join(seq.split(b'"')[::2])
    # Each pass removes exactly the innermost pairs, i.e. one level of nesting.
    for _ in range(max_depth):
        if not seq:
            return False
        seq = seq.replace(b"[]", b"")
    return bool(seq)
