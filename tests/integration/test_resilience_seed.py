"""The seed's "Error Handling in Distributed Systems" code, as written, against real services
behind a real edge and Redis.

Code between the `--- seed ---` markers is copied from the seed `rpc-distributed-workflows.md`
(only reformatted by ruff); the user-supplied pieces (endpoints, a cache) are ours.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest
import redis.asyncio as aioredis

from spark.graphs import Graph
from spark.nodes import Node
from spark.nodes.rpc_client import RemoteRpcProxyConfig, RemoteRpcProxyNode
from spark.runtime.edge import EdgeConfig, EdgeServer
from spark.runtime.worker import run_worker
from support import seed_patterns
from support.seed_patterns import CircuitBreakerProxy, FallbackProxyNode
from support.services import ResilienceRpcNode

pytestmark = pytest.mark.integration


@pytest.fixture
async def edge(redis_url):
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        run_worker(ResilienceRpcNode(), service="lab", url=redis_url, stop=stop, ready=ready)
    )
    await asyncio.wait_for(ready.wait(), 10)
    server = await EdgeServer(EdgeConfig(redis_url=redis_url, port=0)).start()
    yield server
    await server.stop()
    stop.set()
    await task


@pytest.fixture
async def redis(redis_url):
    r = aioredis.Redis.from_url(redis_url)
    yield r
    await r.aclose()


def proxy_to(url: str, method: str, **options) -> RemoteRpcProxyNode:
    return RemoteRpcProxyNode(
        config=RemoteRpcProxyConfig(endpoint=url, default_method=method, **options)
    )


async def test_seed_retry_with_backoff(edge, redis):
    # --- seed: Error Handling / Retry with Backoff ---
    # Configure automatic retry
    config = RemoteRpcProxyConfig(
        endpoint=f"{edge.url}/lab",
        request_timeout=30.0,
        max_retries=3,
        retry_backoff_factor=2.0,  # 1s, 2s, 4s
        retry_on_timeout=True,
    )

    proxy = RemoteRpcProxyNode(config=config)
    # --- end seed ---
    started = time.monotonic()
    result = await Graph(start=proxy).run({"method": "flaky", "key": "seed", "failures": 1})
    assert result.content["attempts"] == 2
    # One failure: one 1 s wait (a second wait, 2 s more, would make it 3 s or longer).
    assert 1.0 <= time.monotonic() - started < 3.0
    await proxy.aclose()


async def test_seed_circuit_breaker_against_a_failing_service(edge, redis, monkeypatch):
    now = [1_000_000.0]  # the seed's breaker reads time.time(): give its module a clock we move
    monkeypatch.setattr(seed_patterns, "time", SimpleNamespace(time=lambda: now[0]))
    remote = proxy_to(f"{edge.url}/lab", "flaky")
    breaker = CircuitBreakerProxy(remote)
    graph = Graph(start=breaker)
    args = {"key": "cb", "failures": 5, "error": "internal"}
    for _ in range(5):
        out = await graph.run(args)
        assert out.content["success"] is False and "-32603" in out.content["error"]
    assert breaker.circuit_open
    assert (await graph.run(args)).content == {"error": "Circuit breaker open", "success": False}
    assert int(await redis.get("lab:flaky:cb")) == 5, "an open circuit does not call"
    breaker.reset_timeout = 0.1
    now[0] += 0.15
    assert (await graph.run(args)).content["attempts"] == 6
    assert not breaker.circuit_open and breaker.failure_count == 0
    await remote.aclose()


async def test_seed_fallback_against_a_down_service(edge):
    down = proxy_to(f"{edge.url}/nobody-home", "echo")  # no workers: unavailable at once
    backup = proxy_to(f"{edge.url}/lab", "echo")
    graph = Graph(start=FallbackProxyNode(down, backup))
    out = await graph.run({"x": 1})
    assert out.content["service"] == "fallback" and out.content["result"] == {"x": 1}
    assert "-32003" in out.content["primary_error"]
    both = Graph(start=FallbackProxyNode(down, proxy_to(f"{edge.url}/also-gone", "echo")))
    out = await both.run({"x": 1})
    assert out.content["error"] == "Both services failed" and out.content["success"] is False
    primary_first = Graph(start=FallbackProxyNode(backup, down))
    assert (await primary_first.run({"y": 2})).content == {"result": {"y": 2}, "service": "primary"}
    for p in (down, backup):
        await p.aclose()


# --- seed: Error Handling / Timeout Handling ---
class TimeoutProxyNode(Node):
    """Proxy with configurable timeout and fallback."""

    async def process(self, context):
        try:
            # 5 second timeout
            result = await asyncio.wait_for(self.proxy.process(context), timeout=5.0)
            return {"result": result, "timed_out": False}

        except asyncio.TimeoutError:  # noqa: UP041 - the seed, as written
            # Return cached result or error
            cached = await self.get_cached_result(context)
            if cached:
                return {"result": cached, "timed_out": True, "source": "cache"}
            else:
                return {
                    "error": "Request timed out and no cache available",
                    "timed_out": True,
                    "success": False,
                }


# --- end seed ---


class CachedTimeoutProxyNode(TimeoutProxyNode):
    """The user-supplied pieces: a proxy and a cache."""

    def __init__(self, proxy, cache, **kwargs):
        super().__init__(**kwargs)
        self.proxy = proxy
        self.cache = cache

    async def get_cached_result(self, context):
        return self.cache.get(context.inputs.content.get("key"))


async def test_seed_timeout_handling_against_a_hanging_service(edge):
    # The proxy's own 0.3 s timeout raises RpcTimeoutError, which is an asyncio.TimeoutError:
    # the seed's `except` catches it as it would catch wait_for's (without a 5 s test).
    hanging = proxy_to(f"{edge.url}/lab", "recorded_sleep", request_timeout=0.3)
    cache = {"hot": {"cached": 1}}
    graph = Graph(start=CachedTimeoutProxyNode(hanging, cache))
    started = time.monotonic()
    out = await graph.run({"key": "hot", "seconds": 30})
    assert out.content == {"result": {"cached": 1}, "timed_out": True, "source": "cache"}
    out = await graph.run({"key": "cold", "seconds": 30})
    assert out.content["timed_out"] is True and out.content["success"] is False
    assert time.monotonic() - started < 15  # two 0.3 s timeouts, not the 30 s sleeps
    fast = proxy_to(f"{edge.url}/lab", "echo")
    out = await Graph(start=CachedTimeoutProxyNode(fast, cache)).run({"key": "x"})
    assert out.content == {"result": {"key": "x"}, "timed_out": False}
    for p in (hanging, fast):
        await p.aclose()
