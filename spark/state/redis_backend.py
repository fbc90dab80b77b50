"""RedisBackend: a Redis hash per namespace, shared by every process and machine.

Keys and commands live in `spark.broker.state`. Transactions take a lease lock on the
namespace (SET NX PX with a random token, renewed while the block runs) and read the hash
in the same script; the commit script applies the writes only if the lock still carries the
token. Plain writes and increments are scripts that refuse to run while the lock is held,
and this class waits and retries them (bounded by `lock_wait`).

Why a lease lock rather than optimistic WATCH/MULTI: the body of `async with
state.transaction()` runs once and cannot be replayed, so an optimistic transaction could
only report a conflict to the caller, who would then need a retry loop around every
transaction. The lock makes the contended case (N processes incrementing one counter)
simply work, costs two round trips per transaction (begin+read, commit) like WATCH/MULTI
would, and the fenced commit keeps it safe when a holder stalls past its lease.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, Hashable, Mapping
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from spark.aio import reraise_cancellation
from spark.broker.connection import connect, describe, resolve_url
from spark.broker.retrying import until_not_none
from spark.broker.state import HashValueError, StateStore, check_namespace
from spark.lifetime import close_with_loop
from spark.state.backend import LoopLocks, StateBackend, StateTransactionHandle
from spark.state.errors import (
    StateConflictError,
    StateConnectionError,
    StateError,
    StateLockTimeout,
    StateTypeError,
)

T = TypeVar("T")

#: First pause while the namespace is locked; doubles up to the cap, with jitter.
_BACKOFF_FIRST = 0.0005
_BACKOFF_CAP = 0.02

# Transactions of this process on one namespace queue here first (FIFO), so only one of
# them at a time polls Redis for the lock and the next starts as soon as one commits.
_LOCAL_QUEUES: dict[Hashable, LoopLocks] = {}
# Lock releases still running after their transaction was cancelled (kept from the GC).
_BACKGROUND: set[asyncio.Task] = set()


class RedisBackend(StateBackend):
    """GraphState in the Redis hash `spark:state:{<namespace>}`.

    `url_or_client`: a broker URL (`redis://`, `rediss://`, `unix://`, `memory://name`; None
    means `$SPARK_REDIS_URL` or the embedded broker) or an existing `redis.asyncio` client,
    which stays the caller's to close. `ttl`: seconds after the last write before the whole
    namespace expires (None: never). `lease`: how long a transaction's lock outlives a
    crashed holder (a live holder renews it). `lock_wait`: how long a write or a transaction
    waits for another transaction before StateLockTimeout.
    """

    def __init__(
        self,
        url_or_client: str | aioredis.Redis | None = None,
        namespace: str = "default",
        ttl: float | None = None,
        *,
        lease: float = 10.0,
        lock_wait: float = 30.0,
    ):
        self.namespace = check_namespace(namespace)
        if ttl is not None and not ttl > 0:
            raise ValueError(f"ttl must be a positive number of seconds or None, not {ttl!r}")
        if not lease > 0 or not lock_wait >= 0:
            raise ValueError("lease must be positive and lock_wait non-negative")
        self.ttl = ttl
        self.lease = float(lease)
        self.lock_wait = float(lock_wait)
        self._client: aioredis.Redis | None
        if url_or_client is None or isinstance(url_or_client, str):
            #: The broker URL, so a worker can open the same state (None for a given client).
            self.url: str | None = resolve_url(url_or_client)
            self._client = None
        else:
            self.url = None
            self._client = url_or_client
        self._store: StateStore | None = None
        self._bound: tuple[int, asyncio.AbstractEventLoop] | None = None

    @property
    def lock_scope(self) -> Hashable:
        where: Any = self.url if self.url is not None else id(self._client)
        return ("redis", where, self.namespace)

    def __repr__(self) -> str:
        where = describe(self.url) if self.url is not None else "<client>"
        return f"RedisBackend({where!r}, namespace={self.namespace!r}, ttl={self.ttl!r})"

    def _ttl_ms(self) -> int:
        return 0 if self.ttl is None else max(1, round(self.ttl * 1000))

    def _lease_ms(self) -> int:
        return max(1, round(self.lease * 1000))

    def store(self) -> StateStore:
        """The broker-level commands for this namespace, on a client for this process/loop.

        A client built from a URL belongs to one event loop and one process, so a new one is
        made when either changes (a backend built at import time, used after a fork).
        """
        if self.url is None:
            if self._store is None:
                assert self._client is not None
                self._store = StateStore(self._client, self.namespace, ttl_ms=self._ttl_ms())
            return self._store
        bound = (os.getpid(), asyncio.get_running_loop())
        if self._store is None or self._bound != bound:
            close_with_loop(self)  # a script that never closes its state still exits cleanly
            self._client = connect(self.url)
            self._store = StateStore(self._client, self.namespace, ttl_ms=self._ttl_ms())
            self._bound = bound
        return self._store

    async def _call(self, fn: Callable[[StateStore], Awaitable[T]]) -> T:
        try:
            return await fn(self.store())
        except HashValueError as exc:
            raise StateTypeError(str(exc)) from exc
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise StateConnectionError(
                f"GraphState namespace {self.namespace!r} on {self._where()}: {exc}"
            ) from exc
        except RedisError as exc:
            raise StateError(
                f"GraphState namespace {self.namespace!r} on {self._where()}: {exc}"
            ) from exc

    def _where(self) -> str:
        return describe(self.url) if self.url is not None else "the given Redis client"

    async def _unlocked(
        self, fn: Callable[[StateStore], Awaitable[T | None]], wait: float | None = None
    ) -> T:
        """Run a write that answers None while a transaction holds the namespace, until not."""

        async def attempt() -> T | None:
            result = await self._call(fn)
            reraise_cancellation()  # redis-py may have swallowed one
            return result

        result = await until_not_none(
            attempt,
            within=self.lock_wait if wait is None else wait,
            base=_BACKOFF_FIRST,
            max_wait=_BACKOFF_CAP,
        )
        if result is None:
            raise StateLockTimeout(
                f"GraphState namespace {self.namespace!r}: a transaction held it for more "
                f"than {self.lock_wait:g}s"
            )
        return result

    # -- StateBackend ----------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        return await self._call(lambda s: s.get(key))

    async def has(self, key: str) -> bool:
        return await self._call(lambda s: s.exists(key))

    async def keys(self) -> list[str]:
        return await self._call(lambda s: s.fields())

    async def snapshot(self) -> dict[str, bytes]:
        return await self._call(lambda s: s.get_all())

    async def write(self, sets: Mapping[str, bytes], deletes: Collection[str] = ()) -> int:
        return await self._unlocked(lambda s: s.write(sets, deletes))

    async def set_absent(self, sets: Mapping[str, bytes]) -> None:
        await self._unlocked(lambda s: s.write(sets, only_absent=True))

    async def increment(self, key: str, by: int) -> int:
        try:
            return await self._unlocked(lambda s: s.incr(key, by))
        except StateTypeError as exc:
            raise StateTypeError(
                f"cannot increment key {key!r}: its value is not a signed 64-bit integer, or "
                f"adding {by} overflows ({exc})"
            ) from exc

    async def ttl_remaining(self) -> float | None:
        """Seconds until this namespace expires (None: no TTL, or nothing stored)."""
        return await self._call(lambda s: s.ttl())

    async def begin(self) -> StateTransactionHandle:
        queue = _LOCAL_QUEUES.setdefault(self.lock_scope, LoopLocks()).get()
        deadline = time.monotonic() + self.lock_wait
        try:
            if queue.locked():
                async with asyncio.timeout(self.lock_wait):
                    await queue.acquire()
            else:
                await queue.acquire()
        except TimeoutError:
            raise StateLockTimeout(
                f"GraphState namespace {self.namespace!r}: other transactions of this process "
                f"held it for more than {self.lock_wait:g}s"
            ) from None
        token = secrets.token_hex(16)
        lease_ms = self._lease_ms()
        try:
            snapshot = await self._unlocked(
                lambda s: s.try_begin(token, lease_ms), max(0.0, deadline - time.monotonic())
            )
        except BaseException as exc:
            queue.release()
            if isinstance(exc, asyncio.CancelledError):
                # The script may have run before the cancellation reached us: give the lock
                # back now rather than block the namespace until the lease runs out.
                self._release_soon(token)
            raise
        return _RedisTransaction(self, token, snapshot, queue)

    def _release_soon(self, token: str) -> None:
        task = asyncio.get_running_loop().create_task(
            self._call(lambda s: s.release(token)), name="spark-state-release"
        )
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def aclose(self) -> None:
        """Close the client this backend made (a client passed in stays open)."""
        client, self._store, self._bound = self._client, None, None
        if self.url is not None:
            self._client = None
            if client is not None:
                await client.aclose()


class _RedisTransaction(StateTransactionHandle):
    def __init__(
        self,
        backend: RedisBackend,
        token: str,
        snapshot: dict[str, bytes],
        queue: asyncio.Lock,
    ):
        self._backend = backend
        self._queue = queue
        self._token = token
        self.snapshot = snapshot
        self._done = False
        self._renewal: asyncio.Task | None = None
        # A timer rather than a sleeping task: most transactions end long before a renewal.
        self._timer = asyncio.get_running_loop().call_later(backend.lease / 3, self._renew_soon)

    def _renew_soon(self) -> None:
        if not self._done:
            self._renewal = asyncio.create_task(self._renew())

    async def _renew(self) -> None:
        backend, token, lease_ms = self._backend, self._token, self._backend._lease_ms()
        try:
            if not await backend._call(lambda s: s.renew(token, lease_ms)):
                return  # lost: the commit will refuse and say so
        except StateError:
            pass  # Redis briefly unreachable: try again before the lease runs out
        if not self._done:
            self._timer = asyncio.get_running_loop().call_later(backend.lease / 3, self._renew_soon)

    def _stop_renewing(self) -> None:
        self._done = True
        self._timer.cancel()
        if self._renewal is not None:
            self._renewal.cancel()

    async def commit(self, sets: Mapping[str, bytes], deletes: Collection[str]) -> None:
        # A connection error here leaves the outcome unknown (the script may have run); if it
        # did not, the lock expires with its lease.
        self._stop_renewing()
        token = self._token
        try:
            committed = await self._backend._call(lambda s: s.commit(token, sets, deletes))
        finally:
            self._queue.release()  # after the commit: the next one here finds Redis free
        if not committed:
            raise StateConflictError(
                f"GraphState namespace {self._backend.namespace!r}: the transaction's lock "
                f"expired before it committed (lease {self._backend.lease:g}s); nothing "
                "was applied"
            )

    async def rollback(self) -> None:
        self._stop_renewing()
        token = self._token
        try:
            await self._backend._call(lambda s: s.release(token))
        finally:
            self._queue.release()
