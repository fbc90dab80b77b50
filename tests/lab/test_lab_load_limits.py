"""Item 7: load limits.

One edge holds 2,000 idle WebSocket connections with bounded memory (bytes per connection
from the edge's VmRSS); a client that never reads cannot stall the others, nor make the edge
buffer without bound; overload is answered with -32002 instead of queueing without bound
(per WebSocket connection: --ws-max-inflight; per service: the enqueue script's backlog cap).
"""

from __future__ import annotations

import asyncio
import base64
import os
import time

import aiohttp
import orjson
import pytest

from spark.broker.keys import ServiceKeys
from spark.client.broker_client import BrokerClient
from spark.client.websocket import WebSocketTransport
from spark.errors import OverloadedError, RpcTimeoutError
from spark.runtime.edge import EdgeConfig, EdgeServer
from support import metrics
from support.lab import TARGET, EdgeProcess, apoll, raise_nofile, report, rss_bytes
from support.processes import WorkerProcess

pytestmark = pytest.mark.timeout(180)


def req(method: str, params, id) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "method": method, "params": params, "id": id})


async def health(http: aiohttp.ClientSession, base: str) -> dict:
    async with http.get(f"{base}/health") as r:
        return await r.json()


async def metric(http: aiohttp.ClientSession, base: str, name: str, **labels: str) -> float:
    async with http.get(f"{base}/metrics") as r:
        text = await r.text()
    return metrics.value(text, name, **labels)


@pytest.fixture
def worker(redis_url):
    w = WorkerProcess(TARGET, redis_url, "--concurrency", "64", service="lab")
    yield w
    w.stop()


async def test_two_thousand_idle_websockets_with_bounded_memory(redis_url, worker):
    want = 2000
    limit = raise_nofile(2 * want + 1000)
    n = want if limit >= 2 * want + 200 else max(100, (limit - 200) // 2)
    edge = EdgeProcess(redis_url, "--ws-heartbeat", "60")
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    try:
        await asyncio.to_thread(worker.wait_ready)
        await asyncio.to_thread(edge.start)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            # Warm up (first connection, imports, buffers) before the baseline.
            warm = await http.ws_connect(f"{edge.http}/ws")
            await warm.send_bytes(req("echo", {"w": 1}, 1))
            assert (await warm.receive_json())["result"] == {"w": 1}
            await warm.close()
            await apoll(lambda: _clients(http, edge.http, 0), timeout=10, what="warm-up closed")
            base_rss = rss_bytes(edge.pid)
            gate = asyncio.Semaphore(64)
            started = time.monotonic()

            async def open_one() -> None:
                async with gate:
                    sockets.append(await http.ws_connect(f"{edge.http}/ws", heartbeat=None))

            await asyncio.gather(*(open_one() for _ in range(n)))
            opened_s = time.monotonic() - started
            await apoll(lambda: _clients(http, edge.http, n), timeout=30, what=f"{n} clients")
            rss = rss_bytes(edge.pid)
            per_conn = (rss - base_rss) / n
            # Every idle connection still works: a call on a few of them, spread out.
            for i, ws in enumerate(sockets[:: max(1, n // 20)]):
                await ws.send_bytes(req("echo", {"i": i}, i))
                assert (await asyncio.wait_for(ws.receive_json(), 10))["result"] == {"i": i}
            for ws in sockets:
                await ws.close()
            await apoll(lambda: _clients(http, edge.http, 0), timeout=30, what="all closed")
            after_close = rss_bytes(edge.pid)
        report(
            "idle_websockets",
            connections=n,
            nofile_limit=limit,
            open_s=opened_s,
            edge_rss_base_mb=base_rss / 2**20,
            edge_rss_mb=rss / 2**20,
            bytes_per_connection=int(per_conn),
            edge_rss_after_close_mb=after_close / 2**20,
        )
        assert n >= 1000
        assert per_conn < 100 * 1024, f"{per_conn:.0f} bytes per idle connection"
        assert edge.alive
    finally:
        edge.stop()


async def _clients(http: aiohttp.ClientSession, base: str, n: int) -> bool:
    return (await health(http, base))["websocket_clients"] == n


class SilentClient:
    """A WebSocket client that sends and never reads (raw asyncio streams: once its read
    buffer is full the kernel's window closes and the edge can no longer send to it)."""

    def __init__(self, port: int):
        self.port = port

    async def open(self) -> SilentClient:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        key = base64.b64encode(os.urandom(16)).decode()
        self.writer.write(
            (
                "GET /lab/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return self

    def send(self, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = bytes([0x81, 0x80 | n])
        elif n < 65536:
            head = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
        else:
            head = bytes([0x81, 0x80 | 127]) + n.to_bytes(8, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(head + mask + masked)

    def close(self) -> None:
        self.writer.transport.abort()


async def _flood(edge_port: int, http, base: str, count: int, size: int):
    """A silent client sends `count` echo calls of `size` bytes; returns it once the edge
    has answered them all (into its buffers: the client reads nothing) or, past its
    per-connection queue limit, disconnected the client."""
    silent = await SilentClient(edge_port).open()
    blob = "x" * size
    before = await metric(
        http, base, "spark_edge_requests_total", service="lab", method="echo", transport="websocket"
    )
    for i in range(count):
        silent.send(req("echo", {"blob": blob}, i))
    await apoll(
        lambda: _answered_or_dropped(http, base, before + count),
        timeout=60,
        what=f"{count} flood calls answered or the silent client dropped",
        interval=0.2,
    )
    return silent


async def _answered_or_dropped(http, base: str, n: float) -> bool:
    clients = await metric(http, base, "spark_edge_websocket_clients", service="lab")
    return clients == 0 or await _answered(http, base, n)


async def _inflight_websocket(http, base: str, n: float) -> bool:
    got = await metric(http, base, "spark_edge_inflight_requests", transport="websocket")
    return got == n


async def _answered(http, base: str, n: float) -> bool:
    got = await metric(
        http, base, "spark_edge_requests_total", service="lab", method="echo", transport="websocket"
    )
    return got >= n


async def test_a_client_that_never_reads_does_not_stall_others(redis_url, worker):
    edge = EdgeProcess(redis_url)
    latencies: list[float] = []
    try:
        await asyncio.to_thread(worker.wait_ready)
        await asyncio.to_thread(edge.start)
        stop = asyncio.Event()
        async with aiohttp.ClientSession() as http, WebSocketTransport(edge.http) as other:

            async def keep_calling() -> None:
                i = 0
                while not stop.is_set():
                    i += 1
                    began = time.monotonic()
                    got = await other.call("whoami", {}, deadline=time.time() + 10)
                    assert "pid" in got
                    latencies.append(time.monotonic() - began)

            caller = asyncio.create_task(keep_calling())
            await apoll(lambda: len(latencies) >= 20, timeout=20, what="other client calling")
            before = len(latencies)
            silent = await _flood(edge.port, http, edge.http, 600, 16_384)
            during = len(latencies) - before
            # The silent client is still connected, its replies stuck at the edge: the
            # other client keeps going (50 more calls, polled with a deadline).
            mark = len(latencies)
            began = time.monotonic()
            await apoll(lambda: len(latencies) >= mark + 50, timeout=15, what="50 more calls")
            after_s = time.monotonic() - began
            stop.set()
            await caller
            silent.close()
        latencies.sort()
        report(
            "slow_client",
            flood_calls=600,
            flood_reply_kb=16,
            other_calls_during_flood=during,
            other_50_calls_while_silent_stuck_s=after_s,
            other_p50_ms=1000 * latencies[len(latencies) // 2],
            other_max_ms=1000 * latencies[-1],
        )
        assert latencies[-1] < 5.0
        assert edge.alive
    finally:
        edge.stop()


async def test_a_client_that_never_reads_cannot_grow_the_edge_without_bound(redis_url, worker):
    """Past --ws-max-outbox unread messages the edge disconnects the silent client (1013,
    its queued replies discarded and its requests in flight cancelled) instead of holding
    every reply: the edge's memory stays bounded and the connection is gone."""
    max_outbox = 200
    edge = EdgeProcess(redis_url, "--ws-max-outbox", str(max_outbox))
    try:
        await asyncio.to_thread(worker.wait_ready)
        await asyncio.to_thread(edge.start)
        async with aiohttp.ClientSession() as http:
            base_rss = rss_bytes(edge.pid)
            count, size = 2000, 24_576
            silent = await _flood(edge.port, http, edge.http, count, size)
            grown = rss_bytes(edge.pid) - base_rss
            await apoll(
                lambda: _clients(http, edge.http, 0),
                timeout=15,
                what="the silent client disconnected",
            )
            silent.close()
            answered = await metric(
                http,
                edge.http,
                "spark_edge_requests_total",
                service="lab",
                method="echo",
                transport="websocket",
            )
            await apoll(
                lambda: _inflight_websocket(http, edge.http, 0),
                timeout=15,
                what="the silent client's requests cancelled",
            )
        report(
            "silent_client_memory",
            replies=count,
            reply_kb=size // 1024,
            replies_total_mb=count * size / 2**20,
            ws_max_outbox=max_outbox,
            answered_before_disconnect=answered,
            edge_rss_growth_mb=grown / 2**20,
        )
        assert edge.alive
        assert answered < count  # disconnected before the edge answered (and held) them all
        assert grown < 16 * 2**20, f"edge grew {grown / 2**20:.1f} MiB for one silent client"
    finally:
        edge.stop()


async def test_per_connection_inflight_limit_answers_overloaded(redis_url, worker):
    edge = EdgeProcess(redis_url, "--ws-max-inflight", "5")
    try:
        await asyncio.to_thread(worker.wait_ready)
        await asyncio.to_thread(edge.start)
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(f"{edge.http}/ws")
            began = time.monotonic()
            for i in range(50):
                await ws.send_bytes(req("sleep", {"seconds": 1.0}, i))
            answers = {}
            first_overloaded = None
            while len(answers) < 50:
                doc = await asyncio.wait_for(ws.receive_json(), 15)
                answers[doc["id"]] = doc
                if "error" in doc and first_overloaded is None:
                    first_overloaded = time.monotonic() - began
            await ws.close()
        codes = [a["error"]["code"] if "error" in a else "ok" for a in answers.values()]
        report(
            "ws_inflight_limit",
            sent=50,
            ok=codes.count("ok"),
            overloaded=codes.count(-32002),
            first_overloaded_s=first_overloaded,
        )
        assert codes.count("ok") == 5 and codes.count(-32002) == 45
        assert first_overloaded < 1.0  # refused at once, not after queueing
    finally:
        edge.stop()


async def test_full_backlog_answers_overloaded_instead_of_queueing(redis_url):
    """The enqueue script refuses past the backlog cap, set with BrokerClient(max_backlog=)
    and EdgeConfig.max_backlog (`spark-edge --max-backlog`)."""
    limit = 20
    client = BrokerClient(redis_url, max_backlog=limit)
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(redis_url)
    try:
        assert client.queue("idle").max_backlog == limit
        refused_after: list[float] = []

        async def one(i: int):
            began = time.monotonic()
            try:
                return await client.call("idle", "echo", {"i": i}, timeout=2)
            except OverloadedError as exc:
                refused_after.append(time.monotonic() - began)
                return exc

        outcomes = await asyncio.gather(*(one(i) for i in range(100)), return_exceptions=True)
        overloaded = [o for o in outcomes if isinstance(o, OverloadedError)]
        timed_out = [o for o in outcomes if isinstance(o, RpcTimeoutError)]
        backlog = await r.xlen(ServiceKeys.for_service("idle").requests)
        # Through an edge too: its broker client refuses the same way (-32002).
        worker = WorkerProcess(TARGET, redis_url, "--concurrency", "1", service="lab")
        await asyncio.to_thread(worker.wait_ready)
        server = await EdgeServer(
            EdgeConfig(redis_url=redis_url, port=0, default_service="lab", max_backlog=5)
        ).start()
        try:
            async with aiohttp.ClientSession() as http:
                batch = [
                    {"jsonrpc": "2.0", "method": "sleep", "params": {"seconds": 0.5}, "id": i}
                    for i in range(30)
                ]
                async with http.post(
                    server.url, data=orjson.dumps(batch), headers={"X-Spark-Timeout": "20"}
                ) as resp:
                    body = await resp.json()
            edge_codes = [b["error"]["code"] if "error" in b else "ok" for b in body]
        finally:
            await server.stop()
            worker.stop()
        report(
            "backlog_limit",
            max_backlog=limit,
            calls=100,
            overloaded=len(overloaded),
            timed_out_in_queue=len(timed_out),
            stream_len=backlog,
            slowest_refusal_s=max(refused_after),
            edge_batch_ok=edge_codes.count("ok"),
            edge_batch_overloaded=edge_codes.count(-32002),
        )
        assert backlog == limit
        assert max(refused_after) < 1.0  # refused at once, not after waiting
        assert len(overloaded) == 100 - limit and len(timed_out) == limit
        assert edge_codes.count(-32002) >= 20 and edge_codes.count("ok") >= 5
        assert set(edge_codes) <= {"ok", -32002}
    finally:
        await client.aclose()
        await r.aclose()


def test_backlog_cap_is_configurable():
    import inspect

    from spark.cli.edge import parser

    assert "max_backlog" in EdgeConfig.__dataclass_fields__
    assert "--max-backlog" in parser().format_help()
    assert "max_backlog" in inspect.signature(BrokerClient).parameters
    assert BrokerClient("redis://x", max_backlog=7).max_backlog == 7
    assert parser().parse_args(["--max-backlog", "9"]).max_backlog == 9
