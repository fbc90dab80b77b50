"""`RpcNode.start_server()` / `stop_server()` (an edge plus an in-process worker), and the
seed's "Integration Testing with Test Services" and "End-to-End Testing" snippets as written
(on 8001..8003 when free, else on free ports)."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest

from spark.graphs import Graph
from spark.graphs.event_bus import EventBus
from spark.nodes import ExecutionContext, NodeMessage
from spark.nodes.rpc import RpcNode
from spark.nodes.rpc_client import RemoteRpcProxyConfig, RemoteRpcProxyNode
from spark.runtime.server import NodeServer
from support.polling import eventually
from support.processes import WorkerProcess
from support.redis_server import free_port

pytestmark = pytest.mark.integration


def accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def port_or_free(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred


@pytest.fixture
def embedded(monkeypatch):
    """No redis_url and no $SPARK_REDIS_URL: the embedded broker."""
    monkeypatch.delenv("SPARK_REDIS_URL", raising=False)


# -- the seed's pieces, defined here ---------------------------------------------------------


class TestRpcNode(RpcNode):
    __test__ = False  # not a pytest class

    async def rpc_test(self, params, context):
        return {"success": True, "echo": params}

    async def rpc_slow(self, params, context):
        await asyncio.sleep(params.get("seconds", 1.0))
        return {"success": True}

    async def rpc_announce(self, params, context):
        await self.broadcast_notification("progress", {"done": params["done"]})
        await self.broadcast_notification(
            "custom", {"topic": "orders.created", "payload": {"id": 7}}
        )
        return "ok"


class ServiceA(RpcNode):
    async def rpc_process(self, params, context):
        return {"data": params["data"], "path": ["a"], "success": True}


class ServiceB(RpcNode):
    async def rpc_process(self, params, context):
        return {**params, "path": [*params["path"], "b"]}


class ServiceC(RpcNode):
    async def rpc_process(self, params, context):
        return {**params, "path": [*params["path"], "c"], "success": params["success"]}


PORTS: dict[int, int] = {}


async def start_service(cls, port):
    service = cls(host="127.0.0.1", port=PORTS.get(port, port))
    await service.start_server()
    return service


@pytest.fixture
def seed_ports():
    PORTS.clear()
    PORTS.update({p: port_or_free(p) for p in (8001, 8002, 8003)})
    yield PORTS
    PORTS.clear()


# -- start_server / stop_server ---------------------------------------------------------------


async def test_start_server_accepts_requests_and_stop_closes_the_port(embedded):
    port = free_port()
    node = TestRpcNode(host="127.0.0.1", port=port)
    assert not accepts("127.0.0.1", port)
    await node.start_server()
    try:
        assert accepts("127.0.0.1", port)  # listening as soon as start_server returns
        async with aiohttp.ClientSession() as http:
            body = {"jsonrpc": "2.0", "method": "test", "params": {"x": 1}, "id": 1}
            async with http.post(f"http://127.0.0.1:{port}", json=body) as resp:
                assert (await resp.json())["result"] == {"success": True, "echo": {"x": 1}}
            async with http.post(f"http://127.0.0.1:{port}/test", json=body) as resp:
                assert (await resp.json())["result"]["success"] is True
            async with http.get(f"http://127.0.0.1:{port}/health") as resp:
                assert (await resp.json())["services"]["test"] == 1
    finally:
        await node.stop_server()
    assert not accepts("127.0.0.1", port)
    # It can serve again.
    await node.start_server()
    try:
        assert accepts("127.0.0.1", port)
    finally:
        await node.stop_server()


async def test_stop_server_drains_requests_in_flight(embedded):
    port = free_port()
    node = TestRpcNode(host="127.0.0.1", port=port)
    await node.start_server()
    proxy = RemoteRpcProxyNode(config=RemoteRpcProxyConfig(endpoint=f"http://127.0.0.1:{port}"))
    try:
        call = asyncio.create_task(proxy.call("slow", {"seconds": 0.5}))
        await asyncio.sleep(0)  # the request is on its way
        await eventually(
            lambda: node._server.edge.edge.metrics.inflight.get("http") >= 1,
            timeout=5,
            what="the request to reach the edge",
            interval=0.01,
        )
        await node.stop_server()
        assert await call == {"success": True}
    finally:
        await proxy.aclose()
        await node.stop_server()


async def test_start_server_on_real_redis_shares_the_service_with_worker_processes(redis_url):
    port = free_port()
    node = TestRpcNode(host="127.0.0.1", port=port, redis_url=redis_url, service="lab")
    other = WorkerProcess("support.services:LabRpcNode", redis_url, service="lab").wait_ready()
    await node.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/health") as resp:
                assert (await resp.json())["services"]["lab"] == 2
    finally:
        await node.stop_server()
        other.stop()


async def test_port_in_use_fails_and_leaves_nothing_running(embedded):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        node = TestRpcNode(host="127.0.0.1", port=port)
        with pytest.raises(OSError):
            await node.start_server()
    server = NodeServer(TestRpcNode(host="127.0.0.1", port=free_port()))
    await server.start()
    await server.stop()


async def test_websocket_proxy_forwards_notifications_to_the_event_bus(embedded):
    port = free_port()
    node = TestRpcNode(host="127.0.0.1", port=port)
    await node.start_server()
    proxy = RemoteRpcProxyNode(
        config=RemoteRpcProxyConfig(endpoint=f"http://127.0.0.1:{port}", transport="websocket")
    )
    bus = EventBus()
    proxy.event_bus = bus
    events = []
    both = asyncio.Event()

    def seen(event):
        events.append((event.topic, event.payload))
        if len(events) == 2:
            both.set()

    bus.subscribe("*", seen)
    try:
        assert await proxy.call("announce", {"done": 3}) == "ok"
        await asyncio.wait_for(both.wait(), 10)
        assert sorted(events) == [
            ("orders.created", {"id": 7}),
            ("remote.rpc.progress", {"done": 3}),
        ]
    finally:
        await proxy.aclose()
        await node.stop_server()


# -- the seed, as written -----------------------------------------------------------------------


# Start test RPC service
async def start_test_service():
    """Start RPC service for integration testing."""
    service = TestRpcNode(host="127.0.0.1", port=PORTS[8001])
    await service.start_server()
    return service


async def test_rpc_integration(embedded, seed_ports):
    # Start service
    service = await start_test_service()

    try:
        # Create proxy
        proxy = RemoteRpcProxyNode(
            config=RemoteRpcProxyConfig(endpoint=f"http://127.0.0.1:{PORTS[8001]}")
        )

        # Test RPC call
        context = ExecutionContext(
            inputs=NodeMessage(content={"method": "test", "data": "value"}), state={}
        )

        result = await proxy.process(context)
        assert result["success"] is True

    finally:
        # Cleanup
        await service.stop_server()


async def test_distributed_workflow_e2e(embedded, seed_ports):
    """End-to-end test of distributed workflow."""

    # Start all services
    services = []
    try:
        service1 = await start_service(ServiceA, port=8001)
        service2 = await start_service(ServiceB, port=8002)
        service3 = await start_service(ServiceC, port=8003)
        services = [service1, service2, service3]

        # Create client graph
        proxy1 = RemoteRpcProxyNode(
            config=RemoteRpcProxyConfig(endpoint=f"http://localhost:{PORTS[8001]}")
        )
        proxy2 = RemoteRpcProxyNode(
            config=RemoteRpcProxyConfig(endpoint=f"http://localhost:{PORTS[8002]}")
        )
        proxy3 = RemoteRpcProxyNode(
            config=RemoteRpcProxyConfig(endpoint=f"http://localhost:{PORTS[8003]}")
        )

        proxy1 >> proxy2 >> proxy3
        graph = Graph(start=proxy1)

        # Run workflow
        result = await graph.run({"data": "test"})

        # Verify end-to-end
        assert result.content["success"] is True
        assert result.content["path"] == ["a", "b", "c"]  # it really went through all three

    finally:
        # Cleanup all services
        for service in services:
            await service.stop_server()
