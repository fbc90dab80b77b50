"""The dict-like object of `async with state.transaction() as tx:`."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

from spark.state.codec import check_key, decode, encode
from spark.state.errors import StateClosedError


class StateTransaction(MutableMapping[str, Any]):
    """A working copy of the namespace, taken under the transaction's lock.

    Reads see the transaction's own writes. Nothing reaches the backend until the block
    exits: then every changed key (assigned, deleted, or a value read and mutated in place)
    is written in one atomic commit. A value that cannot be encoded raises StateEncodeError
    at the assignment; one mutated into something unencodable raises it at the commit,
    which then writes nothing.
    """

    def __init__(self, snapshot: dict[str, bytes]):
        self._raw = snapshot
        self._values: dict[str, Any] = {}
        self._deleted: set[str] = set()
        self._open = True

    def _check_open(self) -> None:
        if not self._open:
            raise StateClosedError("this transaction has ended; start a new one")

    def __getitem__(self, key: str) -> Any:
        self._check_open()
        if not isinstance(key, str):
            raise KeyError(key)
        try:
            return self._values[key]
        except KeyError:
            pass
        if key in self._deleted or key not in self._raw:
            raise KeyError(key)
        value = self._values[key] = decode(key, self._raw[key])
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        self._check_open()
        encode(check_key(key), value)  # fail here, at the line that did it
        self._values[key] = value
        self._deleted.discard(key)

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self._values.pop(key, None)
        if key in self._raw:
            self._deleted.add(key)

    def __contains__(self, key: object) -> bool:
        self._check_open()
        if not isinstance(key, str):
            return False
        return key in self._values or (key in self._raw and key not in self._deleted)

    def __iter__(self) -> Iterator[str]:
        self._check_open()
        for key in self._raw:
            if key not in self._deleted:
                yield key
        for key in self._values:
            if key not in self._raw:
                yield key

    def __len__(self) -> int:
        self._check_open()
        added = sum(1 for key in self._values if key not in self._raw)
        return len(self._raw) - len(self._deleted) + added

    def __repr__(self) -> str:
        if not self._open:
            return "<StateTransaction (ended)>"
        return f"<StateTransaction {dict(self)!r}>"

    def _changes(self) -> tuple[dict[str, bytes], list[str]]:
        """What to commit: encoded values that differ from the snapshot, and deletions."""
        sets: dict[str, bytes] = {}
        for key, value in self._values.items():
            data = encode(key, value)
            if self._raw.get(key) != data:
                sets[key] = data
        return sets, list(self._deleted)
