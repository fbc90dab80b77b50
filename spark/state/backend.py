"""The interface every GraphState backend implements, in encoded bytes.

GraphState encodes values (orjson) before calling a backend and decodes what it returns, so a
backend only stores `str -> bytes` and provides four guarantees:

- each call is atomic on its own (`write` applies all its sets and deletes or none);
- `increment` is an atomic read-modify-write on a signed 64-bit JSON integer;
- `begin()` starts a transaction that excludes every other transaction and every write on
  the same storage (from any instance, and any process for shared backends) until it
  commits or rolls back, and hands over a snapshot of the namespace taken under that lock;
- nothing is cached per instance: every read sees the latest committed write.
"""

from __future__ import annotations

import asyncio
import weakref
from abc import ABC, abstractmethod
from collections.abc import Collection, Hashable, Mapping


class StateTransactionHandle(ABC):
    """A backend transaction: the snapshot read under the lock, then commit or rollback."""

    #: Every key of the namespace and its encoded value, read after the lock was taken.
    snapshot: dict[str, bytes]

    @abstractmethod
    async def commit(self, sets: Mapping[str, bytes], deletes: Collection[str]) -> None:
        """Apply all the writes atomically and release the lock."""

    @abstractmethod
    async def rollback(self) -> None:
        """Release the lock without writing."""


class StateBackend(ABC):
    """Storage for GraphState: `str -> bytes` (JSON), shared by every GraphState using it."""

    @property
    @abstractmethod
    def lock_scope(self) -> Hashable:
        """What a transaction locks (a storage, a file, a namespace on a server).

        GraphState refuses a plain write from inside a transaction on the same scope: it
        would wait for the very transaction that is waiting for it.
        """

    @abstractmethod
    async def get(self, key: str) -> bytes | None: ...

    @abstractmethod
    async def has(self, key: str) -> bool: ...

    @abstractmethod
    async def keys(self) -> list[str]: ...

    @abstractmethod
    async def snapshot(self) -> dict[str, bytes]: ...

    @abstractmethod
    async def write(self, sets: Mapping[str, bytes], deletes: Collection[str] = ()) -> int:
        """Set and delete atomically; returns how many of `deletes` existed."""

    @abstractmethod
    async def set_absent(self, sets: Mapping[str, bytes]) -> None:
        """Set only the keys that are absent (GraphState's `initial_state`)."""

    def set_absent_nowait(self, sets: Mapping[str, bytes]) -> bool:
        """Apply `set_absent` synchronously if this backend can (no I/O); True if done."""
        return False

    @abstractmethod
    async def increment(self, key: str, by: int) -> int: ...

    @abstractmethod
    async def begin(self) -> StateTransactionHandle: ...

    async def aclose(self) -> None:
        """Release connections; the backend reopens them if used again."""
        return None


class LoopLocks:
    """One asyncio.Lock per running event loop (asyncio primitives belong to one loop)."""

    def __init__(self) -> None:
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    def get(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        return lock
