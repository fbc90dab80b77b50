"""SQLiteBackend: one file shared by every process on a machine.

One table, `spark_state(namespace, key, value)`, in WAL mode (readers never wait for a
writer). WAL needs a local filesystem: share the file between processes of one machine, not
over NFS or SMB (use RedisBackend across machines).

Every call reads the file: there is no per-instance cache, so several instances and
processes see each other's writes as soon as they commit. Calls run the stdlib
`sqlite3` module in threads (`asyncio.to_thread`), never on the event loop.

Transactions use `BEGIN IMMEDIATE`: the transaction takes SQLite's write lock before it
reads, holds it while the `async with` block runs, and commits its writes at the end, so
transactions (and plain writes, which also need that lock) exclude each other across
processes. Waiting for the lock is bounded by `timeout` (SQLite's busy timeout).

Inside one process, writers first queue on an asyncio lock per file. A writer waiting on
SQLite's lock blocks a thread, and the transaction holding that lock needs a thread to
commit: queueing in asyncio keeps at most one thread per process waiting on SQLite, so a
busy process cannot starve its own transaction of threads.
"""

from __future__ import annotations

import asyncio
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Hashable, Mapping
from typing import Any, TypeVar

from spark.state.backend import LoopLocks, StateBackend, StateTransactionHandle
from spark.state.codec import incremented
from spark.state.errors import StateError, StateLockTimeout

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spark_state (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID
"""
_GET = "SELECT value FROM spark_state WHERE namespace = ? AND key = ?"
_HAS = "SELECT 1 FROM spark_state WHERE namespace = ? AND key = ?"
_KEYS = "SELECT key FROM spark_state WHERE namespace = ?"
_ALL = "SELECT key, value FROM spark_state WHERE namespace = ?"
_UPSERT = (
    "INSERT INTO spark_state (namespace, key, value) VALUES (?, ?, ?) "
    "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value"
)
_INSERT_ABSENT = "INSERT OR IGNORE INTO spark_state (namespace, key, value) VALUES (?, ?, ?)"
_DELETE = "DELETE FROM spark_state WHERE namespace = ? AND key = ?"

# The in-process writer queue of each file, shared by every SQLiteBackend opened on it.
_FILE_LOCKS: dict[str, LoopLocks] = {}
_FILE_LOCKS_MUTEX = threading.Lock()


class SQLiteBackend(StateBackend):
    """GraphState in an SQLite file (created with its directory on first use).

    `namespace` lets several states share one file. `timeout` bounds how long a write or a
    transaction waits for another one (StateLockTimeout after it). Connections open lazily,
    so the backend can be built at import time and used by forked worker processes.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        namespace: str = "default",
        *,
        timeout: float = 30.0,
        pool_size: int = 4,
    ):
        raw = os.fspath(path)
        if raw in ("", ":memory:") or "mode=memory" in raw:
            raise ValueError("SQLiteBackend needs a file path; use MemoryBackend for memory")
        if not isinstance(namespace, str) or not namespace:
            raise ValueError(f"invalid state namespace {namespace!r}: use a non-empty str")
        self.path = os.path.realpath(raw)
        self.namespace = namespace
        self.timeout = float(timeout)
        self._pool_size = pool_size
        self._idle: list[sqlite3.Connection] = []
        self._mutex = threading.Lock()
        self._pid = os.getpid()
        with _FILE_LOCKS_MUTEX:
            self._writers = _FILE_LOCKS.setdefault(self.path, LoopLocks())

    @property
    def lock_scope(self) -> Hashable:
        return ("sqlite", self.path)

    def __repr__(self) -> str:
        return f"SQLiteBackend({self.path!r}, namespace={self.namespace!r})"

    # -- connections (all of this runs in worker threads) ----------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot open SQLite state file {self.path}: {exc}") from exc
        try:
            self._setup(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _setup(self, conn: sqlite3.Connection) -> None:
        # Switching a new file to WAL needs an exclusive lock and can fail at once with
        # "database is locked" (no busy handler) while other processes open it too: retry.
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(_SCHEMA)
                break
            except sqlite3.OperationalError as exc:
                busy = "locked" in str(exc) or "busy" in str(exc)
                if not busy or time.monotonic() > deadline:
                    raise
                time.sleep(random.uniform(0.005, 0.05))
        conn.execute("PRAGMA synchronous=NORMAL")

    def _acquire_raw(self) -> sqlite3.Connection:
        with self._mutex:
            if self._pid != os.getpid():
                # Forked: a parent's connections must never be used (or closed) here.
                self._idle = []
                self._pid = os.getpid()
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def _release(self, conn: sqlite3.Connection) -> None:
        reusable = True
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                reusable = False
        with self._mutex:
            if reusable and self._pid == os.getpid() and len(self._idle) < self._pool_size:
                self._idle.append(conn)
                return
        conn.close()

    def _translate(self, exc: sqlite3.Error) -> StateError:
        message = str(exc)
        if isinstance(exc, sqlite3.OperationalError) and ("locked" in message or "busy" in message):
            return StateLockTimeout(
                f"SQLite state {self.path}: {message} (waited {self.timeout:g}s for another "
                "writer or transaction)"
            )
        return StateError(f"SQLite state {self.path}: {message}")

    def _acquire(self) -> sqlite3.Connection:
        try:
            return self._acquire_raw()
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        conn = self._acquire()
        try:
            return fn(conn, *args)
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc
        finally:
            self._release(conn)

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.to_thread(self._call, fn, *args)

    async def _lock(self) -> asyncio.Lock:
        lock = self._writers.get()
        if not lock.locked():
            await lock.acquire()
            return lock
        try:
            async with asyncio.timeout(self.timeout):
                await lock.acquire()
        except TimeoutError:
            raise StateLockTimeout(
                f"SQLite state {self.path}: waited {self.timeout:g}s for another writer or "
                "transaction in this process"
            ) from None
        return lock

    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        lock = await self._lock()
        try:
            return await asyncio.to_thread(self._call, fn, *args)
        finally:
            lock.release()

    # -- statements ------------------------------------------------------------------------

    def _get(self, conn: sqlite3.Connection, key: str) -> bytes | None:
        row = conn.execute(_GET, (self.namespace, key)).fetchone()
        return None if row is None else bytes(row[0])

    def _has(self, conn: sqlite3.Connection, key: str) -> bool:
        return conn.execute(_HAS, (self.namespace, key)).fetchone() is not None

    def _keys(self, conn: sqlite3.Connection) -> list[str]:
        return [row[0] for row in conn.execute(_KEYS, (self.namespace,))]

    def _all(self, conn: sqlite3.Connection) -> dict[str, bytes]:
        return {k: bytes(v) for k, v in conn.execute(_ALL, (self.namespace,))}

    def _apply(
        self, conn: sqlite3.Connection, sets: Mapping[str, bytes], deletes: Collection[str]
    ) -> int:
        ns = self.namespace
        if sets:
            conn.executemany(_UPSERT, [(ns, k, v) for k, v in sets.items()])
        return sum(conn.execute(_DELETE, (ns, k)).rowcount for k in deletes)

    def _atomically(self, conn: sqlite3.Connection, fn: Callable[..., T], *args: Any) -> T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = fn(conn, *args)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return result

    def _write_sync(
        self, conn: sqlite3.Connection, sets: Mapping[str, bytes], deletes: Collection[str]
    ) -> int:
        if len(sets) + len(deletes) <= 1:  # one statement is atomic on its own
            return self._apply(conn, sets, deletes)
        return self._atomically(conn, self._apply, sets, deletes)

    def _set_absent_sync(self, conn: sqlite3.Connection, sets: Mapping[str, bytes]) -> None:
        rows = [(self.namespace, k, v) for k, v in sets.items()]
        self._atomically(conn, lambda c: c.executemany(_INSERT_ABSENT, rows))

    def _increment_sync(self, conn: sqlite3.Connection, key: str, by: int) -> int:
        def step(c: sqlite3.Connection) -> int:
            new, data = incremented(key, self._get(c, key), by)
            c.execute(_UPSERT, (self.namespace, key, data))
            return new

        return self._atomically(conn, step)

    # -- StateBackend ----------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        return await self._read(self._get, key)

    async def has(self, key: str) -> bool:
        return await self._read(self._has, key)

    async def keys(self) -> list[str]:
        return await self._read(self._keys)

    async def snapshot(self) -> dict[str, bytes]:
        return await self._read(self._all)

    async def write(self, sets: Mapping[str, bytes], deletes: Collection[str] = ()) -> int:
        return await self._write(self._write_sync, sets, deletes)

    async def set_absent(self, sets: Mapping[str, bytes]) -> None:
        await self._write(self._set_absent_sync, sets)

    async def increment(self, key: str, by: int) -> int:
        return await self._write(self._increment_sync, key, by)

    async def begin(self) -> StateTransactionHandle:
        lock = await self._lock()
        try:
            conn, snapshot = await self._begin_shielded()
        except BaseException:
            lock.release()
            raise
        return _SQLiteTransaction(self, lock, conn, snapshot)

    async def _begin_shielded(self) -> tuple[sqlite3.Connection, dict[str, bytes]]:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, self._begin_sync)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # The thread still takes the lock: give it back as soon as it has.
            future.add_done_callback(self._abandon)
            raise

    def _abandon(self, future: asyncio.Future[tuple[sqlite3.Connection, dict[str, bytes]]]) -> None:
        if not future.cancelled() and future.exception() is None:
            conn, _ = future.result()
            future.get_loop().run_in_executor(None, self._release, conn)

    def _begin_sync(self) -> tuple[sqlite3.Connection, dict[str, bytes]]:
        conn = self._acquire()
        try:
            conn.execute("BEGIN IMMEDIATE")
            return conn, self._all(conn)
        except BaseException as exc:
            self._release(conn)
            if isinstance(exc, sqlite3.Error):
                raise self._translate(exc) from exc
            raise

    def _finish_sync(
        self,
        conn: sqlite3.Connection,
        writes: tuple[Mapping[str, bytes], Collection[str]] | None,
    ) -> None:
        try:
            if writes is not None:
                self._apply(conn, *writes)
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc
        finally:
            self._release(conn)  # rolls back whatever was not committed

    async def aclose(self) -> None:
        with self._mutex:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class _SQLiteTransaction(StateTransactionHandle):
    def __init__(
        self,
        backend: SQLiteBackend,
        lock: asyncio.Lock,
        conn: sqlite3.Connection,
        snapshot: dict[str, bytes],
    ):
        self._backend = backend
        self._lock = lock
        self._conn = conn
        self.snapshot = snapshot

    async def _finish(self, writes: tuple[Mapping[str, bytes], Collection[str]] | None) -> None:
        # The thread always ends the SQLite transaction and returns the connection, even if
        # this task is cancelled while it runs.
        try:
            await asyncio.to_thread(self._backend._finish_sync, self._conn, writes)
        finally:
            self._lock.release()

    async def commit(self, sets: Mapping[str, bytes], deletes: Collection[str]) -> None:
        await self._finish((sets, deletes))

    async def rollback(self) -> None:
        await self._finish(None)
