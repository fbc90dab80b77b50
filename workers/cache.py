"""Cache service: `spark-worker workers.cache:CacheRpcNode` (service `cache`).

Values live in Redis (`shop:{cache}:k:<key>`, JSON-encoded) with a TTL that Redis itself
enforces, so every replica sees the same entries and nothing is lost when one restarts.

`get(key)` -> `{key, hit, value, ttl}` (`hit` tells a cached null from a miss; `ttl` is the
seconds left, null without expiry); `set(key, value, ttl=3600)` (seconds, fractions allowed;
null for no expiry) -> `{key, stored, ttl}`; `delete(key)` -> `{key, deleted}`.
"""

from __future__ import annotations

from typing import Any

from spark.errors import InvalidParamsError
from workers.base import RedisRpcNode, dumps, loads, require_str

DEFAULT_TTL = 3600
MAX_TTL = 30 * 24 * 3600
MAX_KEY = 512
MAX_VALUE_BYTES = 512 * 1024


class RedisCache:
    """The seed's `self.cache`."""

    def __init__(self, node: CacheRpcNode):
        self.node = node

    def _key(self, key: str) -> str:
        return self.node.key("k", key)

    async def get(self, key: str) -> dict[str, Any]:
        async with self.node.redis_client.pipeline(transaction=True) as pipe:
            pipe.get(self._key(key))
            pipe.pttl(self._key(key))
            raw, pttl = await pipe.execute()
        if raw is None:
            return {"key": key, "hit": False, "value": None, "ttl": None}
        ttl = round(pttl / 1000, 3) if pttl >= 0 else None
        return {"key": key, "hit": True, "value": loads(raw), "ttl": ttl}

    async def set(self, key: str, value: Any, ttl: float | None) -> dict[str, Any]:
        data = dumps(value)
        if len(data) > MAX_VALUE_BYTES:
            raise InvalidParamsError(
                "value too large", data={"max_bytes": MAX_VALUE_BYTES, "bytes": len(data)}
            )
        px = None if ttl is None else max(1, round(ttl * 1000))
        await self.node.redis_client.set(self._key(key), data, px=px)
        return {"key": key, "stored": True, "ttl": ttl}

    async def delete(self, key: str) -> dict[str, Any]:
        return {"key": key, "deleted": bool(await self.node.redis_client.delete(self._key(key)))}


def _ttl(params: dict) -> float | None:
    ttl = params.get("ttl", DEFAULT_TTL)
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= MAX_TTL:
        raise InvalidParamsError(
            f"ttl must be a number of seconds in (0, {MAX_TTL}] or null", data={"field": "ttl"}
        )
    return ttl


class CacheRpcNode(RedisRpcNode):
    """Distributed caching service."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cache = RedisCache(self)

    async def rpc_get(self, params, context):
        """Get cached value."""
        key = require_str(params, "key", max_len=MAX_KEY)
        return await self.cache.get(key)

    async def rpc_set(self, params, context):
        """Set cached value."""
        key = require_str(params, "key", max_len=MAX_KEY)
        if "value" not in params:
            raise InvalidParamsError("value is required", data={"field": "value"})
        value = params.get("value")
        ttl = _ttl(params)
        return await self.cache.set(key, value, ttl)

    async def rpc_delete(self, params, context):
        """Remove a cached value."""
        return await self.cache.delete(require_str(params, "key", max_len=MAX_KEY))
