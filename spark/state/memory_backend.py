"""MemoryBackend: a dict in this process (the default; one GraphState, one graph run)."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Hashable, Mapping

from spark.state.backend import LoopLocks, StateBackend, StateTransactionHandle
from spark.state.codec import incremented


class MemoryBackend(StateBackend):
    """Values live in a dict of encoded bytes, so what a caller holds is always a copy.

    Transactions and writes share one asyncio lock (per event loop): a write waits while a
    transaction is open, exactly as on the shared backends.
    """

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._locks = LoopLocks()
        self._open_transactions = 0

    @property
    def lock_scope(self) -> Hashable:
        return ("memory", id(self))

    async def get(self, key: str) -> bytes | None:
        return self._data.get(key)

    async def has(self, key: str) -> bool:
        return key in self._data

    async def keys(self) -> list[str]:
        return list(self._data)

    async def snapshot(self) -> dict[str, bytes]:
        return dict(self._data)

    async def write(self, sets: Mapping[str, bytes], deletes: Collection[str] = ()) -> int:
        async with self._locks.get():
            return self._apply(sets, deletes)

    def _apply(self, sets: Mapping[str, bytes], deletes: Collection[str]) -> int:
        self._data.update(sets)
        deleted = 0
        for key in deletes:
            if self._data.pop(key, None) is not None:
                deleted += 1
        return deleted

    async def set_absent(self, sets: Mapping[str, bytes]) -> None:
        async with self._locks.get():
            self._set_absent(sets)

    def set_absent_nowait(self, sets: Mapping[str, bytes]) -> bool:
        if self._open_transactions:
            return False
        self._set_absent(sets)
        return True

    def _set_absent(self, sets: Mapping[str, bytes]) -> None:
        for key, value in sets.items():
            self._data.setdefault(key, value)

    async def increment(self, key: str, by: int) -> int:
        async with self._locks.get():
            new, data = incremented(key, self._data.get(key), by)
            self._data[key] = data
            return new

    async def begin(self) -> StateTransactionHandle:
        lock = self._locks.get()
        await lock.acquire()
        self._open_transactions += 1
        return _MemoryTransaction(self, lock)

    def __repr__(self) -> str:
        return f"MemoryBackend(keys={len(self._data)})"


class _MemoryTransaction(StateTransactionHandle):
    def __init__(self, backend: MemoryBackend, lock: asyncio.Lock):
        self._backend = backend
        self._lock = lock
        self.snapshot = dict(backend._data)

    def _end(self) -> None:
        self._backend._open_transactions -= 1
        self._lock.release()

    async def commit(self, sets: Mapping[str, bytes], deletes: Collection[str]) -> None:
        try:
            self._backend._apply(sets, deletes)
        finally:
            self._end()

    async def rollback(self) -> None:
        self._end()
