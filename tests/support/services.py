"""Services the integration tests run in real `spark-worker` processes."""

from __future__ import annotations

import asyncio
import os
import time

import redis.asyncio as aioredis

from spark.nodes import Node
from spark.nodes.rpc import RpcNode


class LabRpcNode(RpcNode):
    """Handlers that echo, sleep, count their runs in Redis, fail or kill their process."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._redis: aioredis.Redis | None = None

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            self._redis = aioredis.Redis.from_url(self.runtime.url)
        return self._redis

    async def _count(self, key: str | None) -> int | None:
        if key is None:
            return None
        return await self.redis.incr(f"lab:runs:{key}")

    async def rpc_echo(self, params, context):
        return params

    async def rpc_sleep(self, params, context):
        runs = await self._count(params.get("count"))
        await asyncio.sleep(params.get("seconds", 1.0))
        return {"slept": params.get("seconds", 1.0), "runs": runs, "pid": os.getpid()}

    async def rpc_count(self, params, context):
        return {"runs": await self._count(params["key"]), "pid": os.getpid()}

    async def rpc_fail(self, params, context):
        raise ValueError("this handler always fails")

    async def rpc_crash(self, params, context):
        await self._count(params.get("count"))
        os._exit(3)

    async def rpc_stamp(self, params, context):
        return {"t": time.time()}

    async def rpc_announce(self, params, context):
        """A broadcast to every client of the service, and a note to the caller alone."""
        await self.broadcast_notification("announced", {"text": params.get("text")})
        await self.send_notification_to_client(
            context.metadata["rpc"]["client_id"], "just_for_you", {"text": params.get("text")}
        )
        return {"announced": True}

    async def rpc_state_incr(self, params, context):
        """Uses the caller's GraphState (shared through Redis) with no setup of its own."""
        state = context.graph_state
        if state is None:
            return {"state": None}
        value = await state.increment(params.get("key", "hits"))
        await state.set(f"seen_by_{os.getpid()}", True)
        return {"value": value}

    async def rpc_whoami(self, params, context):
        return {"pid": os.getpid(), "delivery": context.metadata["rpc"]["delivery"]}


class UpperNode(Node):
    """A plain node: served as method "process"."""

    async def process(self, context):
        return {"text": str(context.inputs.content.get("text", "")).upper()}


class StepRpcNode(RpcNode):
    """A chain step: `process` adds its name to the trail and reports success."""

    async def rpc_process(self, params, context):
        trail = [*params.get("trail", []), self.service]
        return {"trail": trail, "success": True, "pid": os.getpid()}


def make_lab_node() -> LabRpcNode:
    """A factory target: `spark-worker support.services:make_lab_node`."""
    return LabRpcNode(name="from-factory")
