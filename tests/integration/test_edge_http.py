"""The edge over HTTP: JSON-RPC semantics, limits, auth, /health and /metrics, on real
sockets against a real redis-server and real workers."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from spark.runtime.edge import EdgeConfig, EdgeServer
from spark.runtime.worker import run_worker
from support import metrics
from support.polling import eventually
from support.processes import WorkerProcess
from support.redis_server import RedisServer
from support.services import ResilienceRpcNode

pytestmark = pytest.mark.integration


@contextlib.asynccontextmanager
async def serving(url: str, service: str = "lab", **options):
    """An in-process worker of ResilienceRpcNode (LabRpcNode and `recorded_sleep`) for
    `service` until the block ends."""
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        run_worker(ResilienceRpcNode(), service=service, url=url, stop=stop, ready=ready, **options)
    )
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield
    finally:
        stop.set()
        await task


@contextlib.asynccontextmanager
async def edge_at(url: str, **options):
    options.setdefault("default_service", "lab")
    server = await EdgeServer(EdgeConfig(redis_url=url, port=0, **options)).start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def edge(redis_url):
    async with serving(redis_url), edge_at(redis_url) as server:
        yield server


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http, url, body, **kw):
    data = body if isinstance(body, bytes | str) else orjson.dumps(body)
    async with http.post(url, data=data, **kw) as resp:
        raw = await resp.read()
        return resp.status, (orjson.loads(raw) if raw else None), resp.headers


def req(method, params=None, id=1):
    doc = {"jsonrpc": "2.0", "method": method, "id": id}
    if params is not None:
        doc["params"] = params
    return doc


async def test_single_call_answers_with_the_callers_id(edge, http):
    status, body, headers = await post(http, edge.url, req("echo", {"a": 1}, id="abc"))
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    assert body == {"jsonrpc": "2.0", "result": {"a": 1}, "id": "abc"}
    # The service can be named in the path as well as by --default-service.
    status, body, _ = await post(http, f"{edge.url}/lab", req("echo", {"b": [1, 2]}, id=7))
    assert (status, body["result"], body["id"]) == (200, {"b": [1, 2]}, 7)


async def test_batch_runs_concurrently_and_keeps_json_rpc_rules(edge, http, redis_url):
    batch = [
        req("recorded_sleep", {"seconds": 0.6, "key": "b1"}, id=1),
        req("recorded_sleep", {"seconds": 0.6, "key": "b2"}, id=2),
        {"jsonrpc": "2.0", "method": "echo", "params": {"n": 1}},  # notification: no answer
        {"foo": "bar"},  # invalid: answered with id null
        req("nope", id=3),
        req("echo", {"x": None}, id=None),  # id null is a request, answered
    ]
    status, body, _ = await post(http, edge.url, batch)
    assert status == 200
    # Concurrently: each sleep started before the other finished (the handlers' own times).
    redis = aioredis.Redis.from_url(redis_url)
    try:
        b1, b2 = [
            {k.decode(): float(v) for k, v in (await redis.hgetall(f"lab:rec:{key}")).items()}
            for key in ("b1", "b2")
        ]
    finally:
        await redis.aclose()
    assert b1["lab:start"] < b2["lab:finish"] and b2["lab:start"] < b1["lab:finish"]
    assert [item["id"] for item in body] == [1, 2, None, 3, None]
    assert body[0]["result"]["slept"] == 0.6 and body[1]["result"]["slept"] == 0.6
    assert body[2]["error"]["code"] == -32600
    assert body[3]["error"]["code"] == -32601
    assert body[4]["result"] == {"x": None}


async def test_notification_gets_204_and_still_runs(edge, http, redis_url):
    status, body, _ = await post(
        http, edge.url, {"jsonrpc": "2.0", "method": "count", "params": {"key": "n1"}}
    )
    assert (status, body) == (204, None)
    status, body, _ = await post(
        http,
        edge.url,
        [
            {"jsonrpc": "2.0", "method": "count", "params": {"key": "n1"}},
            {"jsonrpc": "2.0", "method": "count", "params": {"key": "n1"}},
        ],
    )
    assert (status, body) == (204, None)
    r = aioredis.Redis.from_url(redis_url)
    try:

        async def ran_three() -> bool:
            return int(await r.get("lab:runs:n1") or 0) >= 3

        await eventually(ran_three, what="the notifications to run")
    finally:
        await r.aclose()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"jsonrpc": "2.0", "method": "echo", "params": [1, 2', -32700),
        (b"\xff\xfe not json", -32700),
        (b"", -32700),
        (b"[]", -32600),
        (b'{"jsonrpc": "1.0", "method": "echo", "id": 1}', -32600),
        (b'{"jsonrpc": "2.0", "method": 5, "id": 1}', -32600),
        (b'{"jsonrpc": "2.0", "method": "echo", "params": "x", "id": 1}', -32600),
        (b'{"jsonrpc": "2.0", "method": "missing", "id": 1}', -32601),
        (b'{"jsonrpc": "2.0", "method": "rpc.other", "id": 1}', -32601),
        (b'{"jsonrpc": "2.0", "method": "fail", "id": 1}', -32603),
        (b"[" + b"[" * 200 + b"]" * 200 + b"]", -32007),
    ],
)
async def test_bad_input_is_a_json_rpc_error_with_status_200(edge, http, body, code):
    status, reply, _ = await post(http, edge.url, body)
    assert status == 200
    assert reply["error"]["code"] == code
    # ...and the edge is still fine.
    status, reply, _ = await post(http, edge.url, req("echo", {"ok": True}))
    assert reply["result"] == {"ok": True}


async def test_batch_limit(redis_url, http):
    async with serving(redis_url), edge_at(redis_url, max_batch=3) as edge:
        status, body, _ = await post(http, edge.url, [req("echo", id=i) for i in range(4)])
        assert status == 200
        assert body["error"]["code"] == -32007 and body["id"] is None
        status, body, _ = await post(http, edge.url, [req("echo", id=i) for i in range(3)])
        assert [b["id"] for b in body] == [0, 1, 2]


async def test_service_without_workers_is_unavailable_at_once(edge, http):
    started = time.monotonic()
    status, body, _ = await post(http, f"{edge.url}/nobody-home", req("echo", {}))
    assert time.monotonic() - started < 1.0
    assert status == 200
    assert body["error"]["code"] == -32003
    assert "no live workers" in body["error"]["message"]


async def test_invalid_service_name_and_unknown_route_are_404(edge, http):
    status, body, _ = await post(http, f"{edge.url}/bad%20name!", req("echo"))
    assert status == 404 and body["error"]["code"] == -32601
    async with http.get(f"{edge.url}/a/b/c") as resp:
        assert resp.status == 404


async def test_no_default_service_is_404(redis_url, http):
    async with edge_at(redis_url, default_service=None) as edge:
        status, body, _ = await post(http, edge.url + "/", req("echo"))
        assert status == 404 and body["error"]["code"] == -32601


async def test_oversize_body_is_413(redis_url, http):
    async with serving(redis_url), edge_at(redis_url, max_body_bytes=1000) as edge:
        big = req("echo", {"blob": "x" * 2000})
        status, body, _ = await post(http, edge.url, big)
        assert status == 413 and body["error"]["code"] == -32007

        async def chunks():  # no Content-Length: the limit holds while reading
            for _ in range(10):
                yield b" " * 500

        async with http.post(edge.url, data=chunks()) as resp:
            assert resp.status == 413
        status, body, _ = await post(http, edge.url, req("echo", {"blob": "x" * 100}))
        assert status == 200 and body["result"] == {"blob": "x" * 100}


async def test_bearer_tokens(redis_url, http):
    async with serving(redis_url), edge_at(redis_url, auth_tokens=["s3cret", "other"]) as edge:
        status, body, headers = await post(http, edge.url, req("echo", 1 and {"a": 1}))
        assert status == 401 and body["error"]["code"] == -32005
        assert headers["WWW-Authenticate"] == "Bearer"
        bad = {"Authorization": "Bearer wrong"}
        assert (await post(http, edge.url, req("echo", {}), headers=bad))[0] == 401
        basic = {"Authorization": "Basic czNjcmV0"}
        assert (await post(http, edge.url, req("echo", {}), headers=basic))[0] == 401
        for token in ("s3cret", "other"):
            good = {"Authorization": f"Bearer {token}"}
            status, body, _ = await post(http, edge.url, req("echo", {"a": 1}), headers=good)
            assert (status, body["result"]) == (200, {"a": 1})
        async with http.get(f"{edge.url}/health") as resp:
            assert resp.status == 200  # load balancers probe without credentials
        async with http.get(f"{edge.url}/metrics") as resp:
            assert resp.status == 401
        async with http.get(f"{edge.url}/metrics", headers=good) as resp:
            assert resp.status == 200


async def test_timeout_header_shortens_the_deadline(edge, http):
    started = time.monotonic()
    status, body, _ = await post(
        http, edge.url, req("sleep", {"seconds": 3}), headers={"X-Spark-Timeout": "0.3"}
    )
    assert time.monotonic() - started < 2.0
    assert status == 200 and body["error"]["code"] == -32001
    # Garbage and values over the edge's default fall back to the default.
    status, body, _ = await post(
        http, edge.url, req("echo", {}), headers={"X-Spark-Timeout": "nan"}
    )
    assert body["result"] == {}


async def test_idempotency_key_header(edge, http):
    headers = {"Idempotency-Key": "order-42"}
    first = await post(http, edge.url, req("count", {"key": "idem"}), headers=headers)
    second = await post(http, edge.url, req("count", {"key": "idem"}, id=2), headers=headers)
    assert first[1]["result"]["runs"] == 1
    assert second[1]["result"] == first[1]["result"] and second[1]["id"] == 2


async def test_health_lists_live_workers(edge, http):
    async with http.get(f"{edge.url}/health") as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert doc["status"] == "ok" and doc["redis"] == "ok"
    assert doc["services"]["lab"] == 1
    assert doc["default_service"] == "lab"


async def test_health_is_503_while_redis_is_down_and_recovers(http):
    server = RedisServer().start()
    try:
        async with edge_at(server.url) as edge:
            async with http.get(f"{edge.url}/health") as resp:
                assert resp.status == 200
            server.stop()
            started = time.monotonic()
            async with http.get(f"{edge.url}/health") as resp:
                assert resp.status == 503
                doc = await resp.json()
            assert time.monotonic() - started < 5
            assert doc["status"] == "unavailable" and doc["redis"] == "unreachable"
            # Calls fail fast with "service unavailable", and the edge stays up.
            status, body, _ = await post(http, edge.url, req("echo", {}))
            assert status == 200 and body["error"]["code"] == -32003
            server.start()

            async def healthy() -> bool:
                async with http.get(f"{edge.url}/health") as resp:
                    return resp.status == 200

            await eventually(healthy, timeout=15, what="health to recover", interval=0.1)
    finally:
        server.cleanup()


async def test_metrics(edge, http):
    await post(http, edge.url, req("echo", {}))
    await post(http, edge.url, req("echo", {}))
    await post(http, edge.url, req("missing", {}))
    await post(http, edge.url, b"{nope")
    async with http.get(f"{edge.url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = await resp.text()
    lines = set(text.splitlines())
    ok = {"service": "lab", "method": "echo", "transport": "http", "code": "ok"}
    assert metrics.value(text, "spark_edge_requests_total", **ok) == 2
    missing = {"service": "lab", "method": "missing", "transport": "http", "code": "-32601"}
    assert metrics.value(text, "spark_edge_errors_total", **missing) == 1
    parse = {"service": "lab", "method": "-", "transport": "http", "code": "-32700"}
    assert metrics.value(text, "spark_edge_errors_total", **parse) == 1
    echo = {"service": "lab", "method": "echo"}
    assert metrics.value(text, "spark_edge_request_seconds_count", **echo) == 2
    assert metrics.value(text, "spark_edge_request_seconds_bucket", le="+Inf", **echo) == 2
    assert metrics.value(text, "spark_edge_inflight_requests", transport="http") == 0
    assert "# TYPE spark_edge_request_seconds histogram" in lines
    assert "# TYPE spark_edge_websocket_clients gauge" in lines
    assert metrics.value(text, "spark_edge_http_responses_total", status="200") == 4
    # One name for one thing: no `_created` twins of every counter.
    assert not any(name.endswith("_created") for name in metrics.names(text))


async def test_worker_in_a_separate_process(redis_url, http):
    worker = WorkerProcess("support.services:LabRpcNode", redis_url, service="lab").wait_ready()
    try:
        async with edge_at(redis_url) as edge:
            status, body, _ = await post(http, edge.url, [req("whoami", id=i) for i in range(20)])
            assert status == 200
            assert {b["result"]["pid"] for b in body} == {worker.pid}
    finally:
        worker.stop()
