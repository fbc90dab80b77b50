"""Faults, round 2 (issue 12, items 6 and 7): an edge bounded in bytes, time and names.

Byte budgets per service backlog (in Redis, so every edge and client shares it) and per
WebSocket connection; connections that never finish their headers, or sit idle, are closed;
failing accepts are logged at a steady rate; per-service maps stay bounded whatever names
callers send.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from spark.broker.keys import ServiceKeys
from spark.client.broker_client import BrokerClient
from spark.errors import OverloadedError
from spark.runtime.edge import EdgeConfig, EdgeServer
from spark.runtime.worker import Worker, WorkerConfig
from support.lab import report
from support.polling import eventually

pytestmark = pytest.mark.timeout(90)

KEYS = ServiceKeys.for_service("lab")


async def sleeper(method, params, call):
    await asyncio.sleep(params.get("seconds", 0))
    return {"ok": True}


@contextlib.asynccontextmanager
async def worker_on(url: str):
    worker = Worker(sleeper, WorkerConfig(service="lab"), url)
    task = asyncio.create_task(worker.serve())
    await eventually(lambda: worker.ready.is_set() or task.done(), what="worker ready")
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)


@contextlib.asynccontextmanager
async def edge_on(url: str, **config):
    server = await EdgeServer(
        EdgeConfig(redis_url=url, port=0, default_service="lab", **config)
    ).start()
    try:
        yield server
    finally:
        await server.stop()


# -- byte budgets ---------------------------------------------------------------------------


async def test_a_service_backlog_is_bounded_in_bytes(redis_url):
    pad = "x" * 300_000
    r = aioredis.Redis.from_url(redis_url)
    try:
        async with BrokerClient(redis_url, max_backlog_bytes=1_000_000) as client:
            accepted = refused = 0
            for _ in range(10):
                try:
                    await client.notify("lab", "sleep", {"pad": pad})
                    accepted += 1
                except OverloadedError:
                    refused += 1
            held = await r.xlen(KEYS.requests)
            async with worker_on(redis_url):
                await eventually(lambda: _empty(r), what="the backlog drained")
            counted = int(await r.get(KEYS.backlog_bytes) or 0)
            await client.notify("lab", "sleep", {"pad": pad})  # room again
    finally:
        await r.aclose()
    report("backlog_bytes", budget=1_000_000, sent=10, accepted=accepted, refused=refused)
    assert (accepted, refused, held) == (3, 7, 3)
    assert counted == 0


async def _empty(r: aioredis.Redis) -> bool:
    return await r.xlen(KEYS.requests) == 0


async def test_a_websocket_is_bounded_in_bytes_in_flight(redis_url):
    pad = "x" * 300_000
    async with worker_on(redis_url), edge_on(redis_url, ws_max_inflight_bytes=1_000_000) as edge:
        async with aiohttp.ClientSession() as http, http.ws_connect(f"{edge.url}/ws") as ws:
            for i in range(5):
                params = {"seconds": 5.0, "pad": pad}
                await ws.send_str(
                    orjson.dumps(
                        {"jsonrpc": "2.0", "id": i, "method": "sleep", "params": params}
                    ).decode()
                )
            answers = {}
            while len(answers) < 5:
                msg = orjson.loads((await ws.receive(timeout=30)).data)
                answers[msg["id"]] = msg.get("error", {}).get("code", "ok")
    report("ws_inflight_bytes", budget=1_000_000, sent=5, answers=sorted(answers.items()))
    assert [answers[i] for i in range(5)] == ["ok", "ok", "ok", -32002, -32002]


# -- time: headers and idle connections -----------------------------------------------------


def _closed_by_server(port: int, first: bytes, timeout: float = 20.0) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        if first:
            s.sendall(first)
        try:
            while data := s.recv(65536):
                if b"\r\n\r\n" not in data:
                    continue
        except TimeoutError:
            return False
        return True


@pytest.mark.parametrize(
    "first",
    [
        b"POST /lab HTTP/1.1\r\nHost: x\r\nX-Slow: ",  # headers never finished
        b"",  # nothing sent at all
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",  # answered, then idle keep-alive
    ],
    ids=["slow-headers", "silent", "idle-keepalive"],
)
async def test_connections_without_a_complete_request_are_closed(redis_url, first):
    async with edge_on(redis_url, idle_timeout=1.0) as edge:
        closed = await asyncio.to_thread(_closed_by_server, edge.port, first)
    assert closed


async def test_failing_accepts_are_logged_at_a_steady_rate(redis_url, caplog):
    async with edge_on(redis_url) as edge:
        loop = asyncio.get_running_loop()
        with caplog.at_level(logging.WARNING):
            for _ in range(500):
                # What asyncio's accept loop reports at the descriptor limit.
                loop.call_exception_handler(
                    {
                        "message": "socket.accept() out of system resource",
                        "exception": OSError(24, "Too many open files"),
                    }
                )
        failures = edge.accept_errors.failures
    lines = [r for r in caplog.records if "accept" in r.getMessage()]
    report("accept_errors", reported=500, log_lines=len(lines))
    assert failures == 500
    assert 1 <= len(lines) <= 2


# -- names: per-service maps stay bounded ---------------------------------------------------


async def test_junk_service_names_do_not_grow_the_edge(redis_url, monkeypatch):
    monkeypatch.setattr("spark.client.broker_client.MAX_SERVICES", 50, raising=False)
    async with edge_on(redis_url) as edge:
        async with aiohttp.ClientSession() as http:
            for i in range(300):
                body = {"jsonrpc": "2.0", "id": 1, "method": "x"}
                async with http.post(f"{edge.url}/junk-{i}", json=body) as resp:
                    assert (await resp.json())["error"]["code"] == -32003
        client = edge.edge.client
        queues, liveness = len(client._queues), len(client._liveness)
    report("junk_service_names", names=300, bound=50, queues=queues, liveness=liveness)
    assert queues <= 50 and liveness <= 50
