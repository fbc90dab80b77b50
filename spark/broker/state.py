"""Redis keys and commands behind GraphState: one hash per namespace.

    spark:state:{<namespace>}        hash, field -> JSON value (orjson bytes)
    spark:state:{<namespace>}:lock   string with a random token and a lease (PX): the
                                     transaction lock of the namespace

Both keys share the hash tag, so every script below touches one Redis Cluster slot.

Reads are plain HGET/HEXISTS/HKEYS/HGETALL. Every write is a Lua script that first checks the
lock, so plain writes and increments never land between a transaction's read and its commit
(the caller waits and retries while a transaction holds the namespace). A transaction takes
the lock and reads the hash in one script, and commits in another that applies its writes
only if the lock still carries its token (a transaction whose lease ran out writes nothing).

This module returns raw bytes and reports conditions by value (None = "locked"); the state
layer above decodes values and turns conditions into exceptions.
"""

from __future__ import annotations

import weakref
from collections.abc import Collection, Mapping

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from spark.broker import scripts
from spark.broker.keys import state_key, state_lock_key

NAMESPACE_MAX = 200


class HashValueError(ValueError):
    """HINCRBY refused: the field holds no signed 64-bit integer, or the sum overflows."""


def check_namespace(namespace: str) -> str:
    """Namespaces go inside a hash tag and into request envelopes: printable ASCII, no spaces
    or braces, at most 200 characters."""
    if (
        not isinstance(namespace, str)
        or not 0 < len(namespace) <= NAMESPACE_MAX
        or not all("!" <= c <= "~" and c not in "{}" for c in namespace)
    ):
        raise ValueError(
            f"invalid state namespace {namespace!r}: use 1-{NAMESPACE_MAX} printable ASCII "
            "characters without spaces or braces"
        )
    return namespace


def lock_key(namespace: str) -> str:
    return state_lock_key(namespace)


def _b(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _pairs(flat: list[bytes | str]) -> dict[str, bytes]:
    return {_s(flat[i]): _b(flat[i + 1]) for i in range(0, len(flat), 2)}


def _write_args(sets: Mapping[str, bytes], deletes: Collection[str]) -> list[int | str | bytes]:
    args: list[int | str | bytes] = [len(sets)]
    for field, value in sets.items():
        args.append(field)
        args.append(value)
    args.extend(deletes)
    return args


_SCRIPTS = ("state_write", "state_incr", "state_begin", "state_commit", "state_lease")
# Registered once per client: a worker builds a StateStore per request on a shared client.
_registered: weakref.WeakKeyDictionary[aioredis.Redis, dict[str, AsyncScript]] = (
    weakref.WeakKeyDictionary()
)


def _scripts_of(redis: aioredis.Redis) -> dict[str, AsyncScript]:
    registered = _registered.get(redis)
    if registered is None:
        registered = _registered[redis] = {name: scripts.script(redis, name) for name in _SCRIPTS}
    return registered


class StateStore:
    """The commands for one namespace on one client (scripts registered once per store)."""

    def __init__(self, redis: aioredis.Redis, namespace: str, *, ttl_ms: int = 0):
        self.redis = redis
        self.namespace = check_namespace(namespace)
        self.key = state_key(namespace)
        self.lock_key = lock_key(namespace)
        self.ttl_ms = int(ttl_ms)
        self._keys = [self.key, self.lock_key]
        registered = _scripts_of(redis)
        self._write = registered["state_write"]
        self._incr = registered["state_incr"]
        self._begin = registered["state_begin"]
        self._commit = registered["state_commit"]
        self._lease = registered["state_lease"]

    # -- reads (never wait for the lock: a commit is one atomic script) ---------------------

    async def get(self, field: str) -> bytes | None:
        value = await self.redis.hget(self.key, field)
        return None if value is None else _b(value)

    async def exists(self, field: str) -> bool:
        return bool(await self.redis.hexists(self.key, field))

    async def fields(self) -> list[str]:
        return [_s(f) for f in await self.redis.hkeys(self.key)]

    async def get_all(self) -> dict[str, bytes]:
        return {_s(k): _b(v) for k, v in (await self.redis.hgetall(self.key)).items()}

    async def ttl(self) -> float | None:
        """Seconds until the hash expires (None: no TTL or no hash)."""
        ms = await self.redis.pttl(self.key)
        return ms / 1000 if ms >= 0 else None

    # -- writes: None means "a transaction holds the namespace, try again" -------------------

    async def write(
        self,
        sets: Mapping[str, bytes],
        deletes: Collection[str] = (),
        *,
        only_absent: bool = False,
    ) -> int | None:
        """HSET (or HSETNX) `sets` and HDEL `deletes` atomically; the number of deleted fields."""
        mode = "setnx" if only_absent else "set"
        result = await self._write(
            keys=self._keys, args=[self.ttl_ms, mode, *_write_args(sets, deletes)]
        )
        return None if result == -1 else int(result)

    async def incr(self, field: str, amount: int) -> int | None:
        """HINCRBY; raises HashValueError when the field is not an integer."""
        result = await self._incr(keys=self._keys, args=[field, amount, self.ttl_ms])
        status = int(result[0])
        if status == 0:
            return None
        if status == 2:
            raise HashValueError(_s(result[1]))
        return int(result[1])

    # -- transactions ----------------------------------------------------------------------

    async def try_begin(self, token: str, lease_ms: int) -> dict[str, bytes] | None:
        """Take the lock and read the hash, or None when another transaction holds it."""
        flat = await self._begin(keys=self._keys, args=[token, lease_ms])
        return None if flat is None else _pairs(flat)

    async def commit(self, token: str, sets: Mapping[str, bytes], deletes: Collection[str]) -> bool:
        """Apply the writes and release the lock; False (nothing applied) if the lock is lost."""
        result = await self._commit(
            keys=self._keys, args=[token, self.ttl_ms, *_write_args(sets, deletes)]
        )
        return bool(result == 1)

    async def renew(self, token: str, lease_ms: int) -> bool:
        return bool(await self._lease(keys=[self.lock_key], args=[token, lease_ms]) == 1)

    async def release(self, token: str) -> bool:
        return bool(await self._lease(keys=[self.lock_key], args=[token, 0]) == 1)
