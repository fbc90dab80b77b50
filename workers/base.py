"""What every Redis-backed example service shares: a lazy Redis client, keys, Lua, errors.

A service reaches Redis through the broker URL of the worker serving it
(`self.runtime.url`, set by `run_worker`/`spark-worker`), so the same class works on a real
Redis and on the embedded `memory://` broker. Used outside a worker (a plain node in a local
graph) it falls back to its own `redis_url`, then `$SPARK_REDIS_URL`, then the embedded broker.

Keys: `shop:{<service>}:<name>`. The hash tag keeps one service's keys (and its Lua) on one
Redis Cluster slot, like the broker's own `spark:{<service>}:...` keys.
"""

from __future__ import annotations

import asyncio
import os
from functools import cache
from importlib import resources
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from spark.broker import connect, resolve_url
from spark.errors import InvalidParamsError, RpcError
from spark.nodes.rpc import RpcNode

KEY_PREFIX = "shop"

# Application error codes (JSON-RPC leaves everything outside -32768..-32000 to us).
NOT_FOUND = 1004
CONFLICT = 1009
OUT_OF_STOCK = 1010


class NotFoundError(RpcError):
    code = NOT_FOUND
    default_message = "Not found"


class ConflictError(RpcError):
    code = CONFLICT
    default_message = "Conflict"


class OutOfStockError(RpcError):
    code = OUT_OF_STOCK
    default_message = "Insufficient stock"


@cache
def lua_source(name: str) -> str:
    return resources.files(__package__).joinpath("lua", f"{name}.lua").read_text()


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def loads(raw: bytes | str | None) -> Any:
    return None if raw is None else orjson.loads(raw)


def doc_from_pairs(flat: list) -> dict[str, Any]:
    """A flat [field, json, field, json, ...] reply (HGETALL from Lua) as a dict."""
    return {
        (flat[i].decode() if isinstance(flat[i], bytes) else flat[i]): loads(flat[i + 1])
        for i in range(0, len(flat), 2)
    }


def _field(params: Any, name: str, default: Any = None) -> Any:
    if not isinstance(params, dict):
        raise InvalidParamsError("params must be an object", data={"field": name})
    return params.get(name, default)


def require_str(params: Any, name: str, *, max_len: int = 256) -> str:
    value = _field(params, name)
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise InvalidParamsError(
            f"{name} must be a non-empty string of at most {max_len} characters",
            data={"field": name},
        )
    return value


def require_int(params: Any, name: str, *, default: Any = None, minimum: int = 1) -> int:
    value = _field(params, name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidParamsError(f"{name} must be an integer >= {minimum}", data={"field": name})
    return value


class RedisRpcNode(RpcNode):
    """An RpcNode with `self.redis_client` (lazy) and per-service keys."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._client: aioredis.Redis | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._scripts: dict[str, AsyncScript] = {}

    @property
    def broker_url(self) -> str:
        runtime_url = getattr(self.runtime, "url", None)
        return runtime_url or resolve_url(self.redis_url)

    @property
    def redis_client(self) -> aioredis.Redis:
        """A client of this process and event loop (a new one after the loop changed)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = connect(self.broker_url)
            self._client_loop = loop
            self._scripts = {}
        return self._client

    def key(self, *parts: str) -> str:
        return ":".join((KEY_PREFIX, "{" + self.service + "}", *parts))

    def script(self, name: str) -> AsyncScript:
        client = self.redis_client
        found = self._scripts.get(name)
        if found is None:
            # EVALSHA, falling back to EVAL after a Redis restart (NOSCRIPT).
            found = self._scripts[name] = client.register_script(lua_source(name))
        return found

    async def on_stop(self) -> None:
        """The worker drained: close what this node opened (subclasses flush first)."""
        await self.aclose()

    async def aclose(self) -> None:
        """Close this node's Redis client (the worker does not own it)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
