"""What a node served by a worker can reach beyond its handler: notifications and state."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, runtime_checkable

import redis.asyncio as aioredis

from spark.broker import connect, notify
from spark.context import CallInfo

#: Namespace of a service's own GraphState (when the caller's envelope names none).
SERVICE_STATE_PREFIX = "service:"


class ServiceHost:
    """Bound to a served node as `node.runtime` by the worker that serves it."""

    def __init__(self, url: str, *, service: str | None = None, threads: int = 16):
        self.url = url
        self.service = service
        #: Plain `def` handlers run here: at most `threads` at once (the worker's
        #: concurrency), never on the event loop.
        self.threads = threads
        self._executor: ThreadPoolExecutor | None = None
        self._redis: aioredis.Redis | None = None
        self._own_state: Any = None

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
        """The caller's Redis-backed GraphState when its envelope named one, else the
        service's own (namespace `service:<name>`, shared by every worker of the service)."""
        from spark.state import GraphState, RedisBackend

        if call.state_namespace:
            return GraphState(backend=RedisBackend(self.redis, namespace=call.state_namespace))
        if self._own_state is None:
            namespace = SERVICE_STATE_PREFIX + (self.service or call.service)
            self._own_state = GraphState(backend=RedisBackend(self.redis, namespace=namespace))
        return self._own_state

    async def run_sync(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a plain function in the bounded thread pool, with the caller's contextvars."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="spark-handler")
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def aclose(self) -> None:
        if self._executor is not None:
            executor, self._executor = self._executor, None
            # Threads still running (a handler past its deadline) cannot be stopped: leave
            # them to finish instead of blocking the loop on them.
            executor.shutdown(wait=False, cancel_futures=True)
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None


@runtime_checkable
class Servable(Protocol):
    """What a worker serves: anything with `handle_rpc` (an RpcNode, a Node)."""

    async def handle_rpc(self, method: str, params: Any, call: CallInfo) -> Any: ...


@runtime_checkable
class HostAware(Protocol):
    """A served target that reaches the broker through its host (notifications, state)."""

    runtime: Any


@runtime_checkable
class ServiceAware(Protocol):
    """A served target that learns the service name it is served under."""

    service: str | None


@runtime_checkable
class Starts(Protocol):
    """A served target with a hook run before its first request (plain or async)."""

    def on_start(self) -> Any: ...


@runtime_checkable
class Stops(Protocol):
    """A served target with a hook run after its last request drained (plain or async)."""

    def on_stop(self) -> Any: ...


def bind(target: object, host: Any, service: str) -> None:
    """What serving gives a target: its host as `runtime` (HostAware) and the name it is
    served under as `service` (ServiceAware: its notifications go to that service's clients)."""
    if isinstance(target, HostAware):
        target.runtime = host
    if isinstance(target, ServiceAware):
        target.service = service


async def call_on_start(target: object) -> None:
    """Run the target's `on_start` hook, if it has one."""
    if isinstance(target, Starts):
        await _completed(target.on_start())


async def call_on_stop(target: object) -> None:
    """Run the target's `on_stop` hook, if it has one."""
    if isinstance(target, Stops):
        await _completed(target.on_stop())


async def _completed(result: Any) -> None:
    if inspect.isawaitable(result):
        await result
