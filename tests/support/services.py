"""Services the integration tests run in real `spark-worker` processes."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Required, TypedDict

import redis.asyncio as aioredis

from spark.broker import connect
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
            self._redis = connect(self.runtime.url)
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


class ResilienceRpcNode(LabRpcNode):
    """LabRpcNode plus handlers for the resilience tests: flaky, recorded sleeps, relays."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._proxies: dict = {}

    async def _record(self, key: str, event: str) -> None:
        await self.redis.hset(f"lab:rec:{key}", f"{self.service}:{event}", repr(time.time()))

    async def rpc_flaky(self, params, context):
        """Fails (retryably, or with `error`) while its counter is at most `failures`."""
        from spark.errors import InvalidParamsError, ServiceUnavailableError

        n = await self.redis.incr(f"lab:flaky:{params['key']}")
        if n <= params.get("failures", 1):
            kind = params.get("error", "unavailable")
            if kind == "unavailable":
                raise ServiceUnavailableError("not yet", data={"attempt": n})
            if kind == "invalid":
                raise InvalidParamsError("refused", data={"attempt": n})
            raise RuntimeError(f"failure {n}")
        return {"attempts": n, "pid": os.getpid()}

    async def rpc_recorded_sleep(self, params, context):
        """Sleeps, recording start / finish / cancelled (with times) under lab:rec:<key>."""
        key = params["key"]
        await self.redis.hset(
            f"lab:rec:{key}", f"{self.service}:deadline", repr(context.metadata["rpc"]["deadline"])
        )
        await self._count(key)
        await self._record(key, "start")
        try:
            await asyncio.sleep(params.get("seconds", 30.0))
        except asyncio.CancelledError:
            await self._record(key, "cancelled")
            raise
        await self._record(key, "finish")
        return {"slept": params.get("seconds", 30.0)}

    async def rpc_relay(self, params, context):
        """Calls `hops[0]` (its relay, or recorded_sleep for the last hop) over Redis."""
        from spark.nodes.rpc_client import RemoteRpcProxyConfig, RemoteRpcProxyNode

        key, hops = params["key"], params["hops"]
        await self.redis.hset(
            f"lab:rec:{key}", f"{self.service}:deadline", repr(context.metadata["rpc"]["deadline"])
        )
        await self._record(key, "start")
        proxy = self._proxies.get(hops[0])
        if proxy is None:
            proxy = self._proxies[hops[0]] = RemoteRpcProxyNode(
                RemoteRpcProxyConfig(endpoint=self.runtime.url, transport="redis", service=hops[0])
            )
        method = "relay" if len(hops) > 1 else "recorded_sleep"
        try:
            result = await proxy.call(
                method, {"key": key, "hops": hops[1:], "seconds": params.get("seconds", 30.0)}
            )
        except asyncio.CancelledError:
            await self._record(key, "cancelled")
            raise
        await self._record(key, "finish")
        return {"via": [self.service, *result.get("via", [])]}


class PresenceRpcNode(LabRpcNode):
    """Hears of WebSocket clients through the edge's presence messages: greets each one from
    every worker, and records in Redis (readable across processes) who left, and what `ws`
    the hooks were given."""

    async def on_websocket_connect(self, client_id, websocket):
        await self.redis.rpush(f"lab:presence:{client_id}", f"connect:{os.getpid()}:{websocket}")
        await self.send_notification_to_client(client_id, "welcome", {"pid": os.getpid()})

    async def on_websocket_disconnect(self, client_id, websocket):
        await self.redis.rpush(f"lab:presence:{client_id}", f"disconnect:{os.getpid()}:{websocket}")

    async def rpc_pid(self, params, context):
        return os.getpid()


class GreetParams(TypedDict, total=False):
    name: Required[str]
    shout: bool


class DocumentedRpcNode(RpcNode):
    """A service whose handlers document themselves (for rpc.discover)."""

    async def rpc_add(self, a: int, b: int, context=None) -> int:
        """Add two numbers.

        Both are integers.
        """
        return a + b

    async def rpc_greet(self, params: GreetParams, context) -> str:
        """Greet someone by name."""
        name = params["name"]
        return name.upper() if params.get("shout") else name
