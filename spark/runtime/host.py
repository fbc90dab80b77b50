"""What a node served by a worker can reach beyond its handler: notifications and state."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from spark.broker import connect, notify
from spark.context import CallInfo


class ServiceHost:
    """Bound to a served node as `node.runtime` by the worker that serves it."""

    def __init__(self, url: str):
        self.url = url
        self._redis: aioredis.Redis | None = None

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            self._redis = connect(self.url, max_connections=4)
        return self._redis

    async def notify(
        self, service: str, client_id: str | None, method: str, params: Any = None
    ) -> int:
        return await notify.publish(self.redis, service, client_id, method, params)

    def state_for(self, call: CallInfo) -> Any:
        """The caller's Redis-backed GraphState when its envelope named one, else None."""
        if not call.state_namespace:
            return None
        from spark.state import GraphState, RedisBackend

        return GraphState(backend=RedisBackend(self.redis, namespace=call.state_namespace))

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
