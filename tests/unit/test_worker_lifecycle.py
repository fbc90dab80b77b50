"""Worker lifecycle on the embedded broker: hooks, and stopping then serving again."""

from __future__ import annotations

import asyncio
import time

from spark.client.broker_client import BrokerClient
from spark.nodes.rpc import RpcNode
from spark.runtime.worker import run_worker


class HookedRpcNode(RpcNode):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.events: list[str] = []
        self.begun = asyncio.Event()

    async def on_start(self):
        self.events.append(f"start:{self.runtime is not None}")

    async def on_stop(self):
        self.events.append("stop")

    async def rpc_slow(self, params, context):
        self.events.append("begun")
        self.begun.set()
        await asyncio.sleep(params["seconds"])
        self.events.append("handled")
        return "done"

    async def rpc_echo(self, params, context):
        return params


async def serve(node, url):
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_worker(node, service="hooked", url=url, stop=stop, ready=ready))
    await ready.wait()
    return stop, task


async def test_on_start_before_serving_and_on_stop_after_draining(memory_url):
    node = HookedRpcNode()
    stop, task = await serve(node, memory_url)
    async with BrokerClient(memory_url) as client:
        call = asyncio.create_task(client.call("hooked", "slow", {"seconds": 0.2}))
        async with asyncio.timeout(5):
            await node.begun.wait()
        stop.set()  # while the handler runs: it finishes, then on_stop
        assert await call == "done"
    await task
    assert node.events == ["start:True", "begun", "handled", "stop"]


async def test_a_new_worker_serves_right_after_one_stopped_on_the_same_broker(memory_url):
    first = HookedRpcNode()
    stop, task = await serve(first, memory_url)
    stop.set()
    await task
    second = HookedRpcNode()
    stop, task = await serve(second, memory_url)
    try:
        async with BrokerClient(memory_url) as client:
            started = time.monotonic()
            assert await client.call("hooked", "echo", {"n": 1}, timeout=5) == {"n": 1}
            assert time.monotonic() - started < 2  # not left to a stopped consumer's read
    finally:
        stop.set()
        await task
