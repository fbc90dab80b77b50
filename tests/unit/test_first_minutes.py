"""What a new user meets first, on the embedded broker: blocking handlers, a service with no
workers, what a crash tells the caller, where a service keeps state."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from spark.client.broker_client import BrokerClient
from spark.errors import InternalError, RpcTimeoutError, ServiceUnavailableError
from spark.nodes import Node
from spark.nodes.rpc import RpcNode
from spark.nodes.rpc_client import RemoteRpcProxyConfig, RemoteRpcProxyNode
from spark.nodes.types import ExecutionContext, NodeMessage
from spark.runtime.worker import run_worker

SERVICE = "first"


class FirstRpcNode(RpcNode):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.release = threading.Event()
        self.blocking = threading.Event()
        self.threads: list[str] = []

    def rpc_block(self, params, context):  # a plain def: time.sleep, a sync driver...
        self.threads.append(threading.current_thread().name)
        self.blocking.set()
        assert self.release.wait(30)
        return {"blocked": True}

    async def rpc_ping(self, params, context):
        return "pong"

    async def rpc_hit(self, params, context):
        return await context.graph_state.increment("hits")

    async def rpc_crash(self, params, context):
        raise KeyError("the-missing-key")


@asynccontextmanager
async def serving(node: Any, url: str, **options: Any) -> AsyncIterator[None]:
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        run_worker(node, service=SERVICE, url=url, stop=stop, ready=ready, **options)
    )
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield
    finally:
        if hasattr(node, "release"):
            node.release.set()  # a blocked handler must not hold the drain up
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_a_plain_def_handler_runs_in_a_thread_and_the_worker_goes_on(memory_url):
    node = FirstRpcNode()
    async with serving(node, memory_url, concurrency=4), BrokerClient(memory_url) as client:
        blocked = asyncio.create_task(client.call(SERVICE, "block", {}, timeout=30))
        await asyncio.to_thread(node.blocking.wait, 10)
        # The worker's loop is free: other requests are served meanwhile.
        assert await client.call(SERVICE, "ping", {}, timeout=10) == "pong"
        assert not blocked.done()
        node.release.set()
        assert await blocked == {"blocked": True}
    assert node.threads and node.threads[0].startswith("spark-handler")


async def test_a_redis_proxy_to_a_service_without_workers_fails_at_once(memory_url):
    config = RemoteRpcProxyConfig(
        transport="redis", service="nobody-serves-this", endpoint=memory_url, request_timeout=60
    )
    async with RemoteRpcProxyNode(config=config) as proxy:
        # Bounded well under request_timeout: waiting it out would fail here.
        async with asyncio.timeout(20):
            with pytest.raises(ServiceUnavailableError) as info:
                await proxy.call("anything")
    assert info.value.code == -32003
    assert "embedded broker" in info.value.message


async def test_a_timeout_on_the_embedded_broker_says_where_it_waited(memory_url):
    async with BrokerClient(memory_url) as client:
        with pytest.raises(RpcTimeoutError) as info:
            await client.call("nobody-serves-this", "x", {}, timeout=0.2)
    assert "embedded broker" in info.value.message and "SPARK_REDIS_URL" in info.value.message


async def test_crash_details_are_opt_in(memory_url):
    ctx = ExecutionContext(inputs=NodeMessage(content={}))
    with pytest.raises(InternalError) as info:
        await FirstRpcNode().dispatch("crash", {}, ctx)
    assert "the-missing-key" not in repr(info.value.to_dict())
    with pytest.raises(InternalError) as info:
        await FirstRpcNode(expose_errors=True).dispatch("crash", {}, ctx)
    assert info.value.data == {
        "method": "crash",
        "type": "KeyError",
        "message": "'the-missing-key'",
    }


async def test_crash_details_of_a_plain_node_served(memory_url):
    class Plain(Node):
        async def process(self, context):
            raise ValueError("plain-detail")

    node = Plain()
    node.expose_errors = True  # what `spark-worker --expose-errors` sets
    async with serving(node, memory_url), BrokerClient(memory_url) as client:
        with pytest.raises(InternalError) as info:
            await client.call(SERVICE, "process", {}, timeout=10)
    assert info.value.data["type"] == "ValueError"
    assert info.value.data["message"] == "plain-detail"


async def test_a_service_called_without_a_graph_state_has_its_own(memory_url):
    async with serving(FirstRpcNode(), memory_url), BrokerClient(memory_url) as client:
        hits = [await client.call(SERVICE, "hit", {}, timeout=10) for _ in range(3)]
    assert hits == [1, 2, 3]


async def test_a_plain_node_with_a_def_process_is_served_from_a_thread(memory_url):
    release, started = threading.Event(), threading.Event()

    class Blocking(Node):
        def process(self, context):
            started.set()
            assert release.wait(30)  # on the loop, this would wait out its 30 s and fail
            return {"thread": threading.current_thread().name}

    async with serving(Blocking(), memory_url), BrokerClient(memory_url) as client:
        blocked = asyncio.create_task(client.call(SERVICE, "process", {}, timeout=60))
        # The worker shares this loop (embedded broker): getting here means it is free.
        await asyncio.to_thread(started.wait, 10)
        release.set()
        assert (await blocked)["thread"].startswith("spark-handler")
