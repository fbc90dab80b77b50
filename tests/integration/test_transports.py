"""HttpTransport and WebSocketTransport against a real edge, real Redis and real workers."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import warnings

import pytest

from spark.client.http import HttpTransport, http_url, ws_url
from spark.client.transport import Call
from spark.client.websocket import WebSocketTransport
from spark.errors import (
    InvalidParamsError,
    MethodNotFoundError,
    RpcConnectionError,
    RpcTimeoutError,
    ServiceUnavailableError,
    UnauthorizedError,
)
from spark.nodes.rpc import RpcNode
from spark.runtime.edge import EdgeConfig, EdgeServer
from spark.runtime.worker import run_worker
from support.polling import eventually as poll
from support.redis_server import free_port

pytestmark = pytest.mark.integration


class ChatRpcNode(RpcNode):
    async def rpc_echo(self, params, context):
        return params

    async def rpc_add(self, a, b, context):
        return a + b

    async def rpc_sleep(self, params, context):
        await asyncio.sleep(params["seconds"])
        return params["seconds"]

    async def rpc_deadline(self, params, context):
        return context.metadata["rpc"]["deadline"]

    async def rpc_shout(self, params, context):
        await self.broadcast_notification("shout", params)
        await self.send_notification_to_client(
            context.metadata["rpc"]["client_id"], "just_you", params
        )
        return "ok"


@contextlib.asynccontextmanager
async def serving(url: str, service: str = "chat"):
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        run_worker(ChatRpcNode(), service=service, url=url, stop=stop, ready=ready)
    )
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield
    finally:
        stop.set()
        await task


@pytest.fixture
async def edge(redis_url):
    async with serving(redis_url):
        server = await EdgeServer(
            EdgeConfig(redis_url=redis_url, port=0, default_service="chat")
        ).start()
        yield server
        await server.stop()


def soon(seconds: float = 10.0) -> float:
    return time.time() + seconds


def test_endpoint_rules():
    assert http_url("http://h:8000") == "http://h:8000/"
    assert http_url("http://h:8000/") == "http://h:8000/"
    assert http_url("http://h:8000", "orders") == "http://h:8000/orders"
    assert http_url("http://h:8000/orders", "other") == "http://h:8000/orders"
    assert ws_url("http://h:8000") == "ws://h:8000/ws"
    assert ws_url("https://h:8443/orders") == "wss://h:8443/orders/ws"
    assert ws_url("http://h:8000", "orders") == "ws://h:8000/orders/ws"
    assert ws_url("http://h", ws_endpoint="ws://elsewhere/socket") == "ws://elsewhere/socket"
    with pytest.raises(ValueError):
        http_url("ftp://h")


@pytest.mark.parametrize("kind", [HttpTransport, WebSocketTransport])
async def test_calls_errors_and_batches(edge, kind):
    async with kind(edge.url) as t:
        assert await t.call("echo", {"a": 1}, deadline=soon()) == {"a": 1}
        assert await t.call("add", [2, 3], deadline=soon()) == 5
        with pytest.raises(MethodNotFoundError):
            await t.call("missing", {}, deadline=soon())
        with pytest.raises(InvalidParamsError):
            await t.call("add", [1], deadline=soon())
        await t.notify("echo", {"n": 1}, deadline=soon())
        outcomes = await t.batch(
            [Call("echo", {"i": 1}), Call("echo", {"i": 2}, notify=True), Call("missing")],
            deadline=soon(),
        )
        assert outcomes[0].result == {"i": 1} and outcomes[1].ok and outcomes[1].result is None
        assert isinstance(outcomes[2].error, MethodNotFoundError)
        all_notes = await t.batch([Call("echo", notify=True)] * 2, deadline=soon())
        assert [o.ok for o in all_notes] == [True, True]
        # Many concurrent calls; over WebSocket they share one connection.
        results = await asyncio.gather(
            *(t.call("sleep", {"seconds": 0.3}, deadline=soon()) for _ in range(30))
        )
        assert results == [0.3] * 30
    if kind is WebSocketTransport:
        assert t.connections == 1


@pytest.mark.parametrize("kind", [HttpTransport, WebSocketTransport])
async def test_service_path_and_unavailable_service(edge, kind):
    async with kind(edge.url, service="chat") as t:
        assert await t.call("echo", {"p": 1}, deadline=soon()) == {"p": 1}
    async with kind(edge.url + "/nobody") as t:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailableError):
            await t.call("echo", {}, deadline=soon())
        assert time.monotonic() - started < 5  # at once, not at the 10 s deadline


@pytest.mark.parametrize("kind", [HttpTransport, WebSocketTransport])
async def test_deadline(edge, kind):
    async with kind(edge.url) as t:
        started = time.monotonic()
        with pytest.raises(RpcTimeoutError):
            await t.call("sleep", {"seconds": 3}, deadline=soon(0.3))
        assert time.monotonic() - started < 2  # at the 0.3 s deadline, not the 3 s answer
        if kind is HttpTransport:
            # The remaining budget travels to the edge and the worker (X-Spark-Timeout).
            sent = soon(5.0)
            seen = await t.call("deadline", {}, deadline=sent)
            assert abs(seen - sent) < 0.5
        if kind is WebSocketTransport:
            # The abandoned call's reply arrives later and is dropped, not taken for a
            # notification.
            notes = []
            t.on_notification = lambda method, params: notes.append(method)
            with pytest.raises(RpcTimeoutError):
                await t.call("sleep", {"seconds": 0.3}, deadline=soon(0.1))
            await poll(lambda: t.dropped_replies == 2, what="late replies")
            assert notes == []
            assert t.pending == 0


@pytest.mark.parametrize("kind", [HttpTransport, WebSocketTransport])
async def test_nothing_listening_is_a_connection_error(kind):
    async with kind(f"http://127.0.0.1:{free_port()}") as t:
        with pytest.raises(RpcConnectionError):
            await t.call("echo", {}, deadline=soon())


@pytest.mark.parametrize("kind", [HttpTransport, WebSocketTransport])
async def test_headers_carry_the_token(redis_url, kind):
    async with serving(redis_url):
        server = await EdgeServer(
            EdgeConfig(redis_url=redis_url, port=0, default_service="chat", auth_tokens=["t0k"])
        ).start()
        try:
            async with kind(server.url) as t:
                with pytest.raises(UnauthorizedError):
                    await t.call("echo", {}, deadline=soon())
            async with kind(server.url, headers={"Authorization": "Bearer t0k"}) as t:
                assert await t.call("echo", {"ok": 1}, deadline=soon()) == {"ok": 1}
        finally:
            await server.stop()


async def test_websocket_notifications_reach_on_notification(edge):
    seen: list[tuple[str, object]] = []
    got = asyncio.Event()

    async def on_note(method, params):
        seen.append((method, params))
        if len(seen) == 4:
            got.set()

    async with (
        WebSocketTransport(edge.url, on_notification=on_note) as a,
        WebSocketTransport(edge.url) as b,
    ):
        other: list = []
        b.on_notification = lambda m, p: other.append(m)
        await b.call("echo", {}, deadline=soon())  # connected before the broadcast
        assert await a.call("shout", {"n": 1}, deadline=soon()) == "ok"
        assert await a.call("shout", {"n": 2}, deadline=soon()) == "ok"
        await asyncio.wait_for(got.wait(), 10)
        assert sorted(seen, key=str) == sorted(
            [
                ("shout", {"n": 1}),
                ("just_you", {"n": 1}),
                ("shout", {"n": 2}),
                ("just_you", {"n": 2}),
            ],
            key=str,
        )
        await poll(lambda: len(other) == 2, what="broadcasts at b")
        assert other == ["shout", "shout"]  # b got the broadcasts, not a's targeted ones
        assert a.client_id and a.client_id != b.client_id


async def test_websocket_reconnects_after_the_edge_restarts(redis_url, caplog):
    port = free_port()
    config = EdgeConfig(redis_url=redis_url, port=port, default_service="chat")
    async with serving(redis_url):
        server = await EdgeServer(config).start()
        notes = []
        t = WebSocketTransport(server.url, on_notification=lambda m, p: notes.append(m))
        try:
            assert await t.call("echo", 1 and {}, deadline=soon()) == {}
            pending = asyncio.create_task(t.call("sleep", {"seconds": 3}, deadline=soon()))
            await poll(lambda: t.pending == 1, what="call in flight")
            await server.stop()
            with pytest.raises(RpcConnectionError):
                await pending
            # While the edge is away, the reconnect backs off on the one policy, and says
            # so at its steady rate (the first failure at once), not once per attempt.
            outage = t._backoff.log
            with caplog.at_level("WARNING", logger="spark.client.ws"):
                await poll(lambda: outage.failures >= 5, timeout=30, what="5 failed attempts")
                server = await EdgeServer(
                    EdgeConfig(redis_url=redis_url, port=port, default_service="chat")
                ).start()
                # The background reconnect (on_notification is set) brings the socket back...
                await poll(lambda: t.connected, timeout=15, what="reconnected")
            lines = [r.getMessage() for r in caplog.records if r.name == "spark.client.ws"]
            assert lines[0].startswith(f"reconnecting to {t.ws_url} failed (RpcConnectionError")
            assert lines[-1].startswith(f"reconnecting to {t.ws_url} recovered after")
            assert len(lines) < 5 + 1  # the failures (at least 5), and the recovery
            assert t.connections == 2
            # ...and calls work again on it.
            assert await t.call("echo", {"back": 1}, deadline=soon()) == {"back": 1}
            assert t.connections == 2
        finally:
            await t.aclose()
            await server.stop()


async def test_websocket_reconnect_stops_when_the_edge_refuses_the_token(redis_url, caplog):
    port = free_port()
    config = EdgeConfig(redis_url=redis_url, port=port, default_service="chat")
    async with serving(redis_url):
        server = await EdgeServer(
            EdgeConfig(redis_url=redis_url, port=port, default_service="chat", auth_tokens=["a"])
        ).start()
        t = WebSocketTransport(
            server.url, headers={"Authorization": "Bearer a"}, on_notification=print
        )
        try:
            assert await t.call("echo", {}, deadline=soon()) == {}
            await server.stop()
            config.auth_tokens = ["b"]  # the edge comes back with another token
            server = await EdgeServer(config).start()
            with caplog.at_level("ERROR", logger="spark.client.ws"):
                await poll(lambda: t._reconnector.done(), timeout=30, what="reconnect ended")
            assert not t.connected
            assert any("stopped reconnecting" in r.getMessage() for r in caplog.records)
            # Calls still try (and are told why they fail).
            with pytest.raises(UnauthorizedError):
                await t.call("echo", {}, deadline=soon())
        finally:
            await t.aclose()
            await server.stop()


async def test_no_session_is_left_unclosed(edge):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for kind in (HttpTransport, WebSocketTransport):
            t = kind(edge.url)
            await t.call("echo", {}, deadline=soon())
            await t.aclose()
            del t
        gc.collect()
    aiohttp_leaks = [
        str(w.message)
        for w in caught
        if "client session" in str(w.message) or "connector" in str(w.message)
    ]
    assert not aiohttp_leaks
