"""RemoteRpcProxyNode(transport="redis") against real spark-worker processes and Redis."""

from __future__ import annotations

import asyncio
import os

import pytest

from spark.errors import InvalidParamsError, MethodNotFoundError, RpcConnectionError, RpcError
from spark.graphs import Graph
from spark.graphs.graph_state import GraphState, RedisBackend
from spark.nodes import Node
from spark.nodes.rpc_client import RemoteRpcProxyConfig, RemoteRpcProxyNode
from spark.nodes.types import ExecutionContext, NodeMessage
from support.processes import WorkerProcess, env
from support.redis_server import free_port

pytestmark = pytest.mark.integration

LAB = "support.services:LabRpcNode"


@pytest.fixture
def pool(redis_url):
    started: list[WorkerProcess] = []

    def start(target=LAB, service="lab", count=1, *args):
        for _ in range(count):
            w = WorkerProcess(target, redis_url, *args, service=service)
            started.append(w)
        started[-1].wait_ready(count=count)
        return started[-count:]

    yield start
    for w in started:
        w.stop()


def proxy_for(url: str, service: str = "lab", **options) -> RemoteRpcProxyNode:
    return RemoteRpcProxyNode(
        RemoteRpcProxyConfig(endpoint=url, transport="redis", service=service, **options)
    )


def ctx(content, metadata=None) -> ExecutionContext:
    return ExecutionContext(inputs=NodeMessage(content=content, metadata=metadata or {}))


async def test_calls_spread_over_a_pool_of_workers(pool, redis_url):
    workers = pool(count=3)
    async with proxy_for(redis_url) as proxy:
        results = await asyncio.gather(
            *(proxy.process(ctx({"method": "sleep", "seconds": 0.2})) for _ in range(30))
        )
    assert {r["pid"] for r in results} == {w.pid for w in workers}


async def test_input_mapping_rules(pool, redis_url):
    pool()
    async with proxy_for(redis_url) as proxy:
        # method from content; the rest is params; "id" is a parameter like any other.
        assert await proxy.process(ctx({"method": "echo", "id": 7, "x": 1})) == {"id": 7, "x": 1}
        # explicit params win over the rest of the content
        assert await proxy.process(ctx({"method": "echo", "params": {"a": 1}})) == {"a": 1}
        # method from metadata, then config.default_method
        assert await proxy.process(ctx({"y": 2}, {"rpc": {"method": "echo"}})) == {"y": 2}
    async with proxy_for(redis_url, default_method="echo") as proxy:
        assert await proxy.process(ctx({"z": 3})) == {"z": 3}
    async with proxy_for(redis_url, notify=True) as proxy:
        assert await proxy.process(ctx({"method": "echo"})) is None


async def test_errors_raise_the_matching_rpc_error(pool, redis_url):
    pool()
    async with proxy_for(redis_url) as proxy:
        with pytest.raises(MethodNotFoundError) as info:
            await proxy.process(ctx({"method": "nope"}))
        assert info.value.code == -32601
        assert info.value.data["method"] == "nope"
        assert "echo" in info.value.data["available"]
        # Array params are positional: rpc_echo(params, context) takes one, not three.
        with pytest.raises(InvalidParamsError):
            await proxy.process(ctx({"method": "echo", "params": [1, 2, 3]}))


async def test_handler_crash_is_internal_error_without_details(pool, redis_url):
    pool()
    async with proxy_for(redis_url) as proxy:
        with pytest.raises(RpcError) as info:
            await proxy.process(ctx({"method": "fail"}))
    assert info.value.code == -32603
    assert "always fails" not in repr(info.value)


async def test_unreachable_broker_is_a_connection_error():
    url = f"redis://127.0.0.1:{free_port()}/0"
    async with proxy_for(url, request_timeout=5) as proxy:
        with pytest.raises(RpcConnectionError):
            await proxy.process(ctx({"method": "echo"}))


async def test_graph_chains_proxies_and_local_nodes(pool, redis_url):
    pool("support.services:StepRpcNode", service="step-a")
    pool("support.services:StepRpcNode", service="step-b")

    class Start(Node):
        async def process(self, context):
            return {"trail": ["local"]}

    start = Start()
    a, b = proxy_for(redis_url, "step-a"), proxy_for(redis_url, "step-b")
    start >> a >> b
    result = await Graph(start=start).run({})
    assert result.content["trail"] == ["local", "step-a", "step-b"]
    assert result.content["success"] is True
    await a.aclose()
    await b.aclose()


@pytest.mark.topologies()
async def test_notifications_reach_the_graph_event_bus(pool, redis_url):
    pool()
    proxy = proxy_for(redis_url)
    graph = Graph(start=proxy)
    seen: list = []
    got_both = asyncio.Event()

    def on_event(event):
        seen.append((event.topic, event.payload))
        if len(seen) >= 2:
            got_both.set()

    graph.event_bus.subscribe("remote.rpc.*", on_event)
    result = await graph.run({"method": "announce", "text": "hi"})
    assert result.content == {"announced": True}
    async with asyncio.timeout(5):
        await got_both.wait()
    assert sorted(seen) == [
        ("remote.rpc.announced", {"text": "hi"}),
        ("remote.rpc.just_for_you", {"text": "hi"}),
    ]
    await proxy.aclose()


@pytest.mark.topologies()
async def test_graph_state_is_shared_with_remote_handlers(pool, redis_url):
    """One workflow run, one state: the handler in another process uses the caller's state."""
    workers = pool(count=2)
    state = GraphState(backend=RedisBackend(redis_url, namespace="run-42"))
    proxy = proxy_for(redis_url)
    graph = Graph(start=proxy, state=state)
    for _ in range(10):
        await graph.run({"method": "state_incr", "key": "hits"})
    assert await state.get("hits") == 10
    pids = {int(k.removeprefix("seen_by_")) for k in await state.keys() if k.startswith("seen_by")}
    assert pids <= {w.pid for w in workers} and pids
    # Without a Redis-backed state of the caller's, the handler gets its service's own,
    # shared by every worker of the service and apart from the caller's.
    first = await proxy.process(ctx({"method": "state_incr", "key": "service_hits"}))
    second = await proxy.process(ctx({"method": "state_incr", "key": "service_hits"}))
    assert (first, second) == ({"value": 1}, {"value": 2})
    assert await state.get("service_hits") is None
    await proxy.aclose()
    await state.backend.aclose()


@pytest.mark.parametrize("backend", ["redis", "sqlite"])
async def test_seed_distributed_graph_state_services(redis_url, tmp_path, backend, monkeypatch):
    """The seed's Service1RpcNode / Service2RpcNode, in two worker processes."""
    where = redis_url if backend == "redis" else str(tmp_path / "graph_state.db")
    monkeypatch.setenv("SPARK_TEST_STATE", f"{backend}:{where}")
    assert env()["SPARK_TEST_STATE"] == f"{backend}:{where}"
    one = WorkerProcess(
        "support.seed_state_services:Service1RpcNode", redis_url, service="service1"
    )
    two = WorkerProcess(
        "support.seed_state_services:Service2RpcNode", redis_url, service="service2"
    )
    try:
        one.wait_ready()
        two.wait_ready()
        async with proxy_for(redis_url, "service1") as p1, proxy_for(redis_url, "service2") as p2:
            for i in range(5):
                assert await p1.call("update_state", {"key": "k", "value": i}) == {"updated": True}
                assert await p2.call("read_state", {"key": "k"}) == {"value": i}
    finally:
        one.stop()
        two.stop()
    assert os.environ["SPARK_TEST_STATE"].startswith(backend)
