"""Keys are str, values are stored as their orjson encoding (JSON, never pickle).

Encoding happens before any write, so a value that cannot be encoded raises
`StateEncodeError` and leaves the state untouched. Values come back as plain JSON types:
what orjson writes for a datetime, a dataclass or a tuple reads back as a str, dict or list.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from spark.state.errors import StateDecodeError, StateEncodeError, StateTypeError

#: Counters are signed 64-bit, like Redis HINCRBY, on every backend.
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1


def check_key(key: Any) -> str:
    if not isinstance(key, str):
        raise StateEncodeError(f"GraphState keys must be str, not {type(key).__name__}: {key!r}")
    return key


def encode(key: str, value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise StateEncodeError(
            f"GraphState value for key {key!r} cannot be encoded as JSON: {exc}; nothing written"
        ) from exc


def encode_mapping(mapping: Mapping[str, Any]) -> dict[str, bytes]:
    """Encode every item first, so one bad value writes nothing."""
    if not isinstance(mapping, Mapping):
        raise StateEncodeError(f"expected a mapping of str to JSON values, not {mapping!r}")
    return {check_key(k): encode(k, v) for k, v in mapping.items()}


def decode(key: str, data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise StateDecodeError(
            f"GraphState value for key {key!r} is not valid JSON: {exc}"
        ) from exc


def check_increment(by: Any) -> int:
    if isinstance(by, bool) or not isinstance(by, int):
        raise StateTypeError(f"increment amount must be an int, not {type(by).__name__}: {by!r}")
    if not INT64_MIN <= by <= INT64_MAX:
        raise StateTypeError(f"increment amount {by} is outside the signed 64-bit range")
    return by


def incremented(key: str, data: bytes | None, by: int) -> tuple[int, bytes]:
    """The new counter value and its encoding, for backends without a native HINCRBY."""
    current = 0 if data is None else decode(key, data)
    if isinstance(current, bool) or not isinstance(current, int):
        raise StateTypeError(
            f"cannot increment key {key!r}: its value {current!r} is not an integer"
        )
    new = current + by
    if not INT64_MIN <= new <= INT64_MAX:
        raise StateTypeError(f"incrementing key {key!r} by {by} overflows a signed 64-bit integer")
    return new, orjson.dumps(new)
