"""The edge over WebSocket: concurrent requests, client ids, notifications pushed from
handlers in separate worker processes, disconnects, auth at the handshake, limits."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import orjson
import pytest

from spark.broker import connect, notify
from spark.nodes.rpc import RpcNode
from spark.runtime.edge import EdgeConfig, EdgeServer
from support.polling import eventually as poll
from support.processes import WorkerProcess
from support.redis_server import RedisServer

pytestmark = pytest.mark.integration

TARGET = "integration.test_edge_ws:NotifyRpcNode"


class NotifyRpcNode(RpcNode):
    """Served by `spark-worker` in its own process (imported there by TARGET)."""

    async def rpc_echo(self, params, context):
        return params

    async def rpc_sleep(self, params, context):
        await asyncio.sleep(params.get("seconds", 1.0))
        return {"slept": params.get("seconds", 1.0)}

    async def rpc_whoami(self, params, context):
        return {"client_id": context.metadata["rpc"]["client_id"]}

    async def rpc_broadcast(self, params, context):
        await self.broadcast_notification(params["method"], params.get("params"))
        return "sent"

    async def rpc_tell_me(self, params, context):
        client_id = context.metadata["rpc"]["client_id"]
        await self.send_notification_to_client(client_id, "progress", {"step": params["step"]})
        return "told"

    async def rpc_tell(self, params, context):
        await self.send_notification_to_client(params["client_id"], "direct", params.get("data"))
        return "told"


@contextlib.asynccontextmanager
async def edge_at(url: str, **options):
    options.setdefault("default_service", "notify")
    server = await EdgeServer(EdgeConfig(redis_url=url, port=0, **options)).start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def worker(redis_url):
    w = WorkerProcess(TARGET, redis_url, "--concurrency", "64", service="notify").wait_ready()
    yield w
    w.stop()


@pytest.fixture
async def edge(redis_url, worker):
    async with edge_at(redis_url) as server:
        yield server


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


def ws_url(edge: EdgeServer, service: str | None = None) -> str:
    return edge.url.replace("http", "ws", 1) + (f"/{service}/ws" if service else "/ws")


def req(method, params=None, id=1) -> str:
    doc = {"jsonrpc": "2.0", "method": method, "id": id}
    if params is not None:
        doc["params"] = params
    return orjson.dumps(doc).decode()


async def recv(ws, timeout: float = 10.0):
    msg = await asyncio.wait_for(ws.receive(), timeout)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    return orjson.loads(msg.data)


async def test_requests_are_answered_as_they_complete(edge, http):
    async with http.ws_connect(ws_url(edge)) as ws:
        await ws.send_str(req("sleep", {"seconds": 1.0}, id="slow"))
        await ws.send_str(req("echo", {"fast": True}, id="fast"))
        first = await recv(ws)
        # Answered while the slow one still sleeps: requests on a connection do not queue.
        assert first == {"jsonrpc": "2.0", "result": {"fast": True}, "id": "fast"}
        second = await recv(ws)
        assert second["id"] == "slow" and second["result"] == {"slept": 1.0}


async def test_many_requests_in_flight_on_one_connection(edge, http):
    async with http.ws_connect(ws_url(edge)) as ws:
        started = time.monotonic()
        for i in range(50):
            await ws.send_str(req("sleep", {"seconds": 0.5}, id=i))
        replies = [await recv(ws) for _ in range(50)]
        assert time.monotonic() - started < 12.5  # not 50 x 0.5 s: not one after another
        assert sorted(r["id"] for r in replies) == list(range(50))
        # A batch on the socket is answered as one array.
        await ws.send_str(
            orjson.dumps([orjson.loads(req("echo", {"i": i}, id=i)) for i in range(3)]).decode()
        )
        batch = await recv(ws)
        assert [b["result"] for b in batch] == [{"i": 0}, {"i": 1}, {"i": 2}]


async def test_bad_messages_get_errors_and_the_connection_stays(edge, http):
    async with http.ws_connect(ws_url(edge)) as ws:
        await ws.send_str("{not json")
        assert (await recv(ws))["error"]["code"] == -32700
        await ws.send_bytes(b'{"jsonrpc": "2.0", "method": 1, "id": 4}')
        assert (await recv(ws))["error"]["code"] == -32600
        await ws.send_str(req("missing", id=5))
        error = (await recv(ws))["error"]
        assert (error["code"], error["message"]) == (-32601, "Method not found")
        assert error["data"]["method"] == "missing"
        assert "echo" in error["data"]["available"]
        await ws.send_str(req("echo", {"still": "here"}, id=6))
        assert (await recv(ws))["result"] == {"still": "here"}


async def test_each_connection_has_a_client_id_seen_by_handlers(edge, http):
    ids = []
    for _ in range(2):
        async with http.ws_connect(ws_url(edge)) as ws:
            client_id = ws._response.headers["X-Spark-Client-Id"]
            await ws.send_str(req("whoami"))
            assert (await recv(ws))["result"] == {"client_id": client_id}
            ids.append(client_id)
    assert ids[0] != ids[1]


@pytest.mark.topologies()
async def test_broadcast_and_targeted_notifications_from_a_worker_process(edge, http, redis_url):
    lab = WorkerProcess("support.services:LabRpcNode", redis_url, service="lab").wait_ready()
    try:
        async with (
            http.ws_connect(ws_url(edge)) as a,
            http.ws_connect(ws_url(edge, "notify")) as b,
            http.ws_connect(ws_url(edge, "lab")) as other,
        ):
            b_id = b._response.headers["X-Spark-Client-Id"]
            # Broadcast: every client of the service, none of another service.
            await a.send_str(req("broadcast", {"method": "news", "params": {"n": 1}}))
            got_a = [await recv(a), await recv(a)]
            note = {"jsonrpc": "2.0", "method": "news", "params": {"n": 1}}
            assert note in got_a and {"jsonrpc": "2.0", "result": "sent", "id": 1} in got_a
            assert await recv(b) == note
            # Targeted at the caller: only A.
            await a.send_str(req("tell_me", {"step": 7}, id=2))
            got_a = [await recv(a), await recv(a)]
            assert {"jsonrpc": "2.0", "method": "progress", "params": {"step": 7}} in got_a
            # Targeted at another connection by id: only B.
            await a.send_str(req("tell", {"client_id": b_id, "data": "hi"}, id=3))
            assert (await recv(a))["result"] == "told"
            assert await recv(b) == {"jsonrpc": "2.0", "method": "direct", "params": "hi"}
            # B saw neither A's targeted notification nor anything else; `other` saw nothing.
            await b.send_str(req("echo", {"probe": 1}, id=9))
            assert (await recv(b))["id"] == 9
            await other.send_str(req("echo", {"probe": 2}, id=10))
            assert (await recv(other))["id"] == 10
    finally:
        lab.stop()
    assert edge.edge.metrics.notifications.get("forwarded") == 4


@pytest.mark.topologies()
async def test_disconnect_cancels_pending_requests(edge, http):
    core = edge.edge
    ws = await http.ws_connect(ws_url(edge))
    for i in range(5):
        await ws.send_str(req("sleep", {"seconds": 30}, id=i))
    # Counted in flight first, then waiting for their replies (a cluster's liveness check
    # sits between the two).
    await poll(
        lambda: core.metrics.inflight.get("websocket") == 5 and len(core.client._pending) == 5,
        what="5 in flight, waiting for replies",
    )
    assert core.metrics.ws_clients.get("notify") == 1
    await ws.close()

    def left() -> dict:
        return {
            "in flight": core.metrics.inflight.get("websocket"),
            "awaiting replies": len(core.client._pending),
            "sockets": len(core.sockets),
            "notify clients": core.metrics.ws_clients.get("notify"),
        }

    dropped = {"in flight": 0, "awaiting replies": 0, "sockets": 0, "notify clients": 0}
    # Well under the handlers' 30 s: dropped by the close, not by finishing.
    try:
        await poll(lambda: left() == dropped, timeout=10, what="the closed connection dropped")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: left {left()}") from None

    # Their late replies are dropped and the edge keeps serving.
    async with http.ws_connect(ws_url(edge)) as ws2:
        await ws2.send_str(req("echo", {"after": True}))
        assert (await recv(ws2))["result"] == {"after": True}


@pytest.mark.topologies()
async def test_notifications_reach_a_client_through_any_edge(edge, http, redis_url):
    """Two edges on one broker: a handler called through one edge notifies a WebSocket
    client connected to the other (on a cluster: sharded channels, one per client)."""
    async with edge_at(redis_url) as second:
        async with (
            http.ws_connect(ws_url(edge)) as a,
            http.ws_connect(ws_url(second)) as b,
        ):
            b_id = b._response.headers["X-Spark-Client-Id"]
            await a.send_str(req("tell", {"client_id": b_id, "data": "across"}, id=1))
            assert (await recv(a))["result"] == "told"
            assert await recv(b) == {"jsonrpc": "2.0", "method": "direct", "params": "across"}
            await a.send_str(req("broadcast", {"method": "news", "params": {"n": 2}}, id=2))
            note = {"jsonrpc": "2.0", "method": "news", "params": {"n": 2}}
            assert await recv(b) == note
            assert note in [await recv(a), await recv(a)]


async def test_auth_at_the_handshake(redis_url, worker, http):
    async with edge_at(redis_url, auth_tokens=["tok"]) as edge:
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(ws_url(edge))
        assert info.value.status == 401
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(ws_url(edge), headers={"Authorization": "Bearer nope"})
        for kwargs in (
            {"headers": {"Authorization": "Bearer tok"}},
            {"params": {"token": "tok"}},  # browsers cannot set headers on WebSocket
        ):
            async with http.ws_connect(ws_url(edge), **kwargs) as ws:
                await ws.send_str(req("echo", {"ok": 1}))
                assert (await recv(ws))["result"] == {"ok": 1}


async def test_oversize_message_closes_the_connection(redis_url, worker, http):
    async with edge_at(redis_url, max_body_bytes=1000) as edge:
        async with http.ws_connect(ws_url(edge)) as ws:
            await ws.send_str(req("echo", {"blob": "x" * 100}))
            assert (await recv(ws))["result"] == {"blob": "x" * 100}
            await ws.send_str(req("echo", {"blob": "x" * 5000}))
            msg = await asyncio.wait_for(ws.receive(), 10)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
        await poll(lambda: not edge.edge.sockets, what="connection unregistered")


async def test_server_pings(redis_url, worker, http):
    async with edge_at(redis_url, ws_heartbeat=0.2) as edge:
        async with http.ws_connect(ws_url(edge), autoping=False) as ws:
            msg = await asyncio.wait_for(ws.receive(), 5)
            assert msg.type is aiohttp.WSMsgType.PING
            await ws.pong(msg.data)


async def test_shutdown_closes_websockets_going_away(redis_url, worker, http):
    edge = await EdgeServer(
        EdgeConfig(redis_url=redis_url, port=0, default_service="notify")
    ).start()
    stopped = False
    try:
        async with http.ws_connect(ws_url(edge)) as ws:
            stopper = asyncio.create_task(edge.stop())
            msg = await asyncio.wait_for(ws.receive(), 10)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert ws.close_code == aiohttp.WSCloseCode.GOING_AWAY
            await asyncio.wait_for(stopper, 15)
            stopped = True
    finally:
        if not stopped:
            await edge.stop()


async def test_notification_listener_survives_a_redis_restart(http):
    server = RedisServer().start()
    publisher = None
    try:
        async with edge_at(server.url, default_service="svc") as edge:
            listener = edge.edge.listener
            assert listener.subscribed.is_set()
            async with http.ws_connect(ws_url(edge)) as ws:
                server.restart()
                publisher = connect(server.url, max_connections=1)
                # Resubscribed (by redis-py's own reconnect or by the listener's loop) once a
                # publish reaches a subscriber; nothing here cares which path did it.

                async def delivered() -> bool:
                    return await notify.publish(publisher, "svc", None, "back", {"ok": True}) == 1

                await poll(delivered, timeout=15, what="the listener resubscribed")
                assert await recv(ws) == {
                    "jsonrpc": "2.0",
                    "method": "back",
                    "params": {"ok": True},
                }
    finally:
        if publisher is not None:
            await publisher.aclose()
        server.cleanup()


@pytest.mark.parametrize("broker", ["redis", "memory"])
async def test_notification_listener_on_a_client_channel(broker, redis_url):
    from spark.broker.keys import client_channel

    # (Not the memory_url fixture: a parametrized test's name has brackets, which urlparse
    # reads as an IPv6 host.)
    url = redis_url if broker == "redis" else "memory://listener-client-channel"
    got: list = []
    arrived = asyncio.Event()

    def on_note(note):
        got.append((note.method, note.params, note.service, note.client_id))
        arrived.set()

    publisher = connect(url, max_connections=1)
    listener = notify.NotificationListener(url, on_note, channels=[client_channel("me")])
    try:
        await listener.start()
        assert listener.subscribed.is_set()
        await notify.publish(publisher, "svc", "someone-else", "ignored", None)
        await notify.publish(publisher, "svc", "me", "hello", {"x": 1})
        await asyncio.wait_for(arrived.wait(), 10)
        assert got == [("hello", {"x": 1}, "svc", "me")]
    finally:
        await listener.aclose()
        await publisher.aclose()
