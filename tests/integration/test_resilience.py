"""Retries, idempotency, deadlines, cancellation, policies and batches, end to end: real
redis-server, real edge, workers in this process (fast) or in their own processes (chains)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from spark.broker.keys import GROUP, ServiceKeys
from spark.client.broker_client import BrokerClient
from spark.client.transport import Call
from spark.client.websocket import WebSocketTransport
from spark.errors import (
    InternalError,
    InvalidParamsError,
    MethodNotFoundError,
    RpcTimeoutError,
    ServiceUnavailableError,
)
from spark.graphs import Graph
from spark.nodes.policies import (
    CircuitBreaker,
    CircuitBreakerNode,
    CircuitOpenError,
    FallbackNode,
    RateLimiter,
    RateLimitNode,
    TimeoutNode,
)
from spark.nodes.rpc_client import RemoteRpcProxyConfig, RemoteRpcProxyNode
from spark.nodes.types import ExecutionContext, NodeMessage
from spark.runtime.edge import EdgeConfig, EdgeServer
from spark.runtime.worker import run_worker
from support.polling import eventually as poll
from support.processes import WorkerProcess
from support.services import ResilienceRpcNode

pytestmark = pytest.mark.integration

TARGET = "support.services:ResilienceRpcNode"
TRANSPORTS = ["redis", "http", "websocket"]


@contextlib.asynccontextmanager
async def serving(url: str, service: str = "lab", **options):
    """An in-process worker of ResilienceRpcNode for `service` until the block ends."""
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


@pytest.fixture
async def redis(redis_url):
    r = aioredis.Redis.from_url(redis_url)
    yield r
    await r.aclose()


@pytest.fixture
async def edge(redis_url):
    server = await EdgeServer(EdgeConfig(redis_url=redis_url, port=0)).start()
    yield server
    await server.stop()


@pytest.fixture
async def lab(redis_url):
    async with serving(redis_url):
        yield


@pytest.fixture
async def proxies(redis_url, edge):
    """Makes proxies to `service` over a transport (redis: the broker; http/ws: the edge)."""
    made: list[RemoteRpcProxyNode] = []

    def make(transport: str = "redis", service: str = "lab", **options) -> RemoteRpcProxyNode:
        endpoint = redis_url if transport == "redis" else edge.url
        proxy = RemoteRpcProxyNode(
            RemoteRpcProxyConfig(
                endpoint=endpoint, transport=transport, service=service, **options
            ),
            name=f"{service}-{transport}",
        )
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        await proxy.aclose()


async def runs(redis, key: str) -> int:
    return int(await redis.get(f"lab:runs:{key}") or 0)


async def recorded(redis, key: str) -> dict[str, float]:
    raw = await redis.hgetall(f"lab:rec:{key}")
    return {k.decode(): float(v) for k, v in raw.items()}


async def pending(redis, service: str = "lab") -> int:
    info = await redis.xpending(ServiceKeys.for_service(service).requests, GROUP)
    return info["pending"]


def ctx(content, metadata=None) -> ExecutionContext:
    return ExecutionContext(inputs=NodeMessage(content=content, metadata=metadata or {}))


# -- 1. retries ------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_service_that_fails_n_times_is_retried(lab, proxies, redis, transport):
    proxy = proxies(transport, max_retries=3, retry_initial_delay=0.05)
    assert (await proxy.call("flaky", {"key": "a", "failures": 2}))["attempts"] == 3
    # Not enough retries: the last retryable error comes out.
    short = proxies(transport, max_retries=1, retry_initial_delay=0.05)
    with pytest.raises(ServiceUnavailableError):
        await short.call("flaky", {"key": "b", "failures": 5})
    assert int(await redis.get("lab:flaky:b")) == 2


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_application_errors_are_never_retried(lab, proxies, redis, transport):
    proxy = proxies(transport, max_retries=3, retry_initial_delay=0.05, retry_on_timeout=True)
    with pytest.raises(InvalidParamsError):
        await proxy.call("flaky", {"key": "app", "failures": 5, "error": "invalid"})
    with pytest.raises(InternalError):
        await proxy.call("flaky", {"key": "crash", "failures": 5, "error": "internal"})
    assert int(await redis.get("lab:flaky:app")) == 1
    assert int(await redis.get("lab:flaky:crash")) == 1


async def test_timeouts_are_retried_only_when_asked(lab, proxies, redis):
    proxy = proxies(max_retries=3, retry_initial_delay=0.05, request_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(RpcTimeoutError):
        await proxy.call("sleep", {"seconds": 5, "count": "t"})
    assert time.monotonic() - started < 2.5  # not the 5 s sleep
    assert await runs(redis, "t") == 1  # and not retried


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_retry_after_a_timeout_never_runs_the_handler_twice(lab, proxies, redis, transport):
    """The first attempt times out at the client; the retry (same key) gets the first run's
    reply from the worker's stored-reply dedup."""
    proxy = proxies(
        transport,
        request_timeout=0.4,
        max_retries=2,
        retry_on_timeout=True,
        retry_initial_delay=0.05,
    )
    started = time.monotonic()
    result = await proxy.call("sleep", {"seconds": 0.8, "count": f"once-{transport}"})
    # The answer is the first run's (it cannot come before that run's 0.8 s); how much
    # later it comes is the machine's speed, not the property.
    assert time.monotonic() - started >= 0.75
    assert result["slept"] == 0.8 and result["runs"] == 1
    assert await runs(redis, f"once-{transport}") == 1


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_callers_idempotency_key_is_always_sent(lab, proxies, redis, transport):
    proxy = proxies(transport)  # no retries
    key = f"order-{transport}"
    first = await proxy.call("count", {"key": key}, idempotency_key=key)
    assert await proxy.call("count", {"key": key}, idempotency_key=key) == first
    meta = {"rpc": {"idempotency_key": key}}
    assert await proxy.process(ctx({"method": "count", "key": key}, meta)) == first
    assert await runs(redis, key) == 1
    # Without a key (and without retries) each call runs.
    await proxy.call("count", {"key": key})
    assert await runs(redis, key) == 2


async def test_a_service_that_starts_late_is_reached_by_retries(redis_url, edge, proxies):
    once = proxies("http", service="late")
    started = time.monotonic()
    with pytest.raises(ServiceUnavailableError):
        await once.call("echo", {"hello": 1})
    assert time.monotonic() - started < 5, "no live workers must fail fast (not time out)"
    patient = proxies("http", service="late", max_retries=6, retry_initial_delay=0.2)
    attempts = 0
    send = patient.transport.call

    async def counted(*args, **kwargs):
        nonlocal attempts
        attempts += 1
        return await send(*args, **kwargs)

    patient.transport.call = counted
    call = asyncio.create_task(patient.call("echo", {"hello": 2}))
    # Refused at least once and tried again: the call is retrying, not failed.
    await poll(lambda: attempts >= 2, timeout=10, what="a second attempt")
    assert not call.done()
    worker = WorkerProcess(TARGET, redis_url, service="late")
    try:
        assert await asyncio.wait_for(call, 15) == {"hello": 2}
    finally:
        worker.stop()


# -- 3. deadlines -------------------------------------------------------------------------------


@pytest.fixture
def chain(redis_url):
    workers = [WorkerProcess(TARGET, redis_url, service=f"chain-{s}") for s in "abc"]
    try:
        for w in workers:
            w.wait_ready()
        yield workers
    finally:
        for w in workers:
            w.stop()


async def test_a_chain_of_three_services_stops_at_the_callers_deadline(chain, proxies, redis):
    """A -> B -> C, each a worker process calling the next through its own proxy (with the
    default 30 s timeout); C sleeps 30 s. Everything ends at the caller's 1 s deadline."""
    proxy = proxies(service="chain-a", request_timeout=1.0)
    started = time.time()
    with pytest.raises(RpcTimeoutError):
        await proxy.call("relay", {"key": "ch", "hops": ["chain-b", "chain-c"], "seconds": 30})
    ended = time.time()
    # At the caller's deadline, not after C's 30 s (the upper bound only tells them apart).
    assert 0.9 < ended - started < 10, ended - started

    async def c_stopped():
        rec = await recorded(redis, "ch")
        return rec if "chain-c:cancelled" in rec else None

    rec = await poll(c_stopped, timeout=5, what="C's handler stopped")
    deadline = rec["chain-a:deadline"]
    assert started + 1.0 - 0.01 <= deadline <= ended + 1.0  # the caller's 1 s, set by the call
    # Every hop inherited the caller's deadline, none got more (budgets travel relative,
    # counted from each stream entry's time on Redis's clock: equal to a few ms).
    assert rec["chain-b:deadline"] == pytest.approx(deadline, abs=0.05)
    assert rec["chain-c:deadline"] == pytest.approx(deadline, abs=0.05)
    assert rec["chain-a:start"] < rec["chain-b:start"] < rec["chain-c:start"] < deadline
    # C was stopped at the deadline, and never finished.
    assert rec["chain-c:cancelled"] == pytest.approx(deadline, abs=0.25)
    assert not any(k.endswith(":finish") for k in rec)

    async def none_pending() -> bool:
        return all([await pending(redis, s) == 0 for s in ("chain-a", "chain-b", "chain-c")])

    assert await poll(none_pending, timeout=10, what="every hop acknowledged")


@pytest.mark.parametrize("transport", ["http", "websocket"])
async def test_edge_calls_carry_their_deadline_to_the_worker(lab, proxies, redis, transport):
    proxy = proxies(transport, request_timeout=0.5)
    started = time.time()
    with pytest.raises(RpcTimeoutError):
        await proxy.call("recorded_sleep", {"key": transport, "seconds": 30})
    assert time.time() - started < 1.0

    async def stopped():
        rec = await recorded(redis, transport)
        return rec if "lab:cancelled" in rec else None

    rec = await poll(stopped, timeout=3, what="handler stopped")
    assert rec["lab:deadline"] == pytest.approx(started + 0.5, abs=0.1)
    assert rec["lab:cancelled"] < started + 1.0


# -- 4. cancellation ------------------------------------------------------------------------------


async def test_a_cancelled_caller_cancels_the_handler(lab, redis_url, redis):
    async with BrokerClient(redis_url) as client:
        call = asyncio.create_task(
            client.call("lab", "recorded_sleep", {"key": "c1", "seconds": 30}, timeout=30)
        )
        await poll(lambda: recorded(redis, "c1"), what="handler started")
        cancelled_at = time.time()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call

        async def handler_cancelled():
            rec = await recorded(redis, "c1")
            return rec if "lab:cancelled" in rec else None

        rec = await poll(handler_cancelled, timeout=3, what="handler cancelled")
        assert rec["lab:cancelled"] - cancelled_at < 1.0
        assert "lab:finish" not in rec
        # Answered (CancelledError) and acknowledged: it will not run again.
        await poll(lambda: _zero(pending(redis)), timeout=3, what="entry acked")
        # A later request answered by the same worker: it has read past the cancelled one.
        assert await client.call("lab", "echo", {"after": "c1"}, timeout=10) == {"after": "c1"}
        assert await runs(redis, "c1") == 1


async def _zero(aw) -> bool:
    return await aw == 0


async def _at_least(aw, n: int) -> bool:
    return await aw >= n


async def test_giving_up_after_retries_cancels_the_handler(lab, proxies, redis):
    """Attempts that time out leave the request running for the retry; when the call gives up
    for good (long before its 20 s deadline), the worker is told."""
    proxy = proxies(
        request_timeout=0.3,
        max_retries=1,
        retry_on_timeout=True,
        retry_initial_delay=0.05,
        total_timeout=20,
    )
    started = time.time()
    with pytest.raises(RpcTimeoutError):
        await proxy.call("recorded_sleep", {"key": "gu", "seconds": 30})
    gave_up = time.time()
    assert gave_up - started < 1.0

    async def handler_cancelled():
        rec = await recorded(redis, "gu")
        return rec if "lab:cancelled" in rec else None

    rec = await poll(handler_cancelled, timeout=3, what="handler cancelled")
    assert rec["lab:cancelled"] - gave_up < 1.0
    # The retry waited for the first run instead of starting a second one.
    assert rec["lab:deadline"] == pytest.approx(started + 20, abs=0.2)
    assert await runs(redis, "gu") == 1
    await poll(lambda: _zero(pending(redis)), timeout=3, what="entries acked")


async def test_closing_a_websocket_cancels_its_requests(lab, edge, redis):
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{edge.url}/lab/ws") as ws:
        await ws.send_str(
            orjson.dumps(
                {
                    "jsonrpc": "2.0",
                    "method": "recorded_sleep",
                    "params": {"key": "ws", "seconds": 30},
                    "id": 1,
                }
            ).decode()
        )
        await poll(lambda: recorded(redis, "ws"), what="handler started")
    closed_at = time.time()

    async def handler_cancelled():
        rec = await recorded(redis, "ws")
        return rec if "lab:cancelled" in rec else None

    rec = await poll(handler_cancelled, timeout=3, what="handler cancelled")
    assert rec["lab:cancelled"] - closed_at < 1.0
    await poll(lambda: _zero(pending(redis)), timeout=3, what="entry acked")


async def test_an_http_client_going_away_cancels_unless_it_sent_a_key(lab, edge, redis):
    def body(key, seconds):
        return orjson.dumps(
            {
                "jsonrpc": "2.0",
                "method": "recorded_sleep",
                "params": {"key": key, "seconds": seconds},
                "id": 1,
            }
        )

    async with aiohttp.ClientSession() as http:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await http.post(f"{edge.url}/lab", data=body("gone", 30))
        left_at = time.time()

        async def cancelled():
            rec = await recorded(redis, "gone")
            return rec if "lab:cancelled" in rec else None

        rec = await poll(cancelled, timeout=3, what="handler cancelled")
        assert rec["lab:cancelled"] - left_at < 1.0

        # With an Idempotency-Key the request outlives the client: its retry gets the answer.
        headers = {"Idempotency-Key": "keep-me"}
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await http.post(f"{edge.url}/lab", data=body("kept", 0.6), headers=headers)
        async with http.post(f"{edge.url}/lab", data=body("kept", 0.6), headers=headers) as resp:
            assert (await resp.json())["result"] == {"slept": 0.6}
        rec = await recorded(redis, "kept")
        assert "lab:finish" in rec and "lab:cancelled" not in rec
        assert await runs(redis, "kept") == 1


async def test_a_request_cancelled_while_queued_is_never_run(redis_url, redis):
    async with serving(redis_url, concurrency=1), BrokerClient(redis_url) as client:
        busy = asyncio.create_task(
            client.call("lab", "sleep", {"seconds": 0.6, "count": "busy"}, timeout=5)
        )
        await poll(lambda: runs(redis, "busy"), what="worker busy")
        requests = ServiceKeys.for_service("lab").requests
        queued = asyncio.create_task(client.call("lab", "count", {"key": "queued"}, timeout=5))
        # Queued behind the busy one (both entries in the stream) before it is cancelled.
        await poll(lambda: _at_least(redis.xlen(requests), 2), timeout=5, what="queued")
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert (await busy)["runs"] == 1
        await poll(lambda: _zero(redis.xlen(requests)), timeout=3)
        assert await runs(redis, "queued") == 0


# -- 5. policies against real services ----------------------------------------------------------


async def test_circuit_breaker_node_with_a_service_failing_n_times(lab, proxies, redis):
    now = [0.0]
    breaker = CircuitBreaker(
        failure_threshold=3, reset_timeout=0.3, name="flaky", clock=lambda: now[0]
    )
    node = CircuitBreakerNode(proxies(default_method="flaky"), breaker)
    graph = Graph(start=node)
    events: list = []
    graph.event_bus.subscribe("policy.*", lambda e: events.append(e.topic))
    args = {"key": "cb", "failures": 3, "error": "internal"}
    for _ in range(3):
        with pytest.raises(InternalError):
            await graph.run(args)
    assert breaker.state == "open"
    with pytest.raises(CircuitOpenError):
        await graph.run(args)
    assert int(await redis.get("lab:flaky:cb")) == 3, "an open circuit must not call"
    now[0] += 0.35  # past reset_timeout
    assert (await graph.run(args)).content["attempts"] == 4
    assert breaker.state == "closed"
    assert events == [
        "policy.circuit.opened",
        "policy.circuit.rejected",
        "policy.circuit.half_open",
        "policy.circuit.closed",
    ]


async def test_circuit_breaker_directly_on_a_proxy(proxies):
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=60, name="nobody")
    proxy = proxies("http", service="nobody-home", circuit_breaker=breaker, max_retries=1)
    proxy.config.retry_initial_delay = 0.01
    graph = Graph(start=proxy)
    events: list = []
    graph.event_bus.subscribe("policy.circuit.*", lambda e: events.append(e.payload))
    for _ in range(2):
        with pytest.raises(ServiceUnavailableError):
            await graph.run({"method": "echo"})
    with pytest.raises(CircuitOpenError):
        await graph.run({"method": "echo"})
    assert events[0]["to"] == "open" and events[0]["proxy"] == proxy.name
    assert events[0]["error"]["code"] == -32003


async def test_fallback_from_a_hanging_service_under_a_timeout(lab, proxies, redis):
    hanging = proxies(default_method="recorded_sleep")
    backup = proxies(default_method="echo")
    node = FallbackNode(TimeoutNode(hanging, 0.4), backup)
    graph = Graph(start=node)
    events: list = []
    graph.event_bus.subscribe("policy.*", lambda e: events.append(e.topic))
    started = time.time()
    out = await graph.run({"key": "hang", "seconds": 30})
    assert time.time() - started < 1.0
    assert out.content == {"key": "hang", "seconds": 30}
    assert out.metadata["fallback"]["primary_error"]["code"] == -32001
    assert events == ["policy.timeout", "policy.fallback.used"]

    # The TimeoutNode's budget reached the service: its handler stopped at the same time.
    async def stopped():
        rec = await recorded(redis, "hang")
        return rec if "lab:cancelled" in rec else None

    rec = await poll(stopped, timeout=3, what="hanging handler stopped")
    assert rec["lab:deadline"] == pytest.approx(started + 0.4, abs=0.1)


async def test_rate_limit_node_in_front_of_a_service(lab, proxies, redis):
    node = RateLimitNode(proxies(default_method="count"), RateLimiter(rate=20, burst=2))
    graph = Graph(start=node)
    limited: list = []
    graph.event_bus.subscribe("policy.rate_limited", lambda e: limited.append(e.payload))
    started = time.monotonic()
    await asyncio.gather(*(graph.run({"key": "rl"}) for _ in range(6)))
    # Two at once, then one per 50 ms.
    assert time.monotonic() - started >= 0.18
    assert await runs(redis, "rl") == 6
    assert len(limited) == 4 and all(not p["rejected"] for p in limited)


# -- 6. batches ---------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_call_batch_over_every_transport(lab, proxies, redis, edge, transport):
    proxy = proxies(transport)
    posts_before = edge.edge.metrics.http.get("200")
    outcomes = await proxy.call_batch(
        [
            Call("echo", {"i": 1}),
            Call("count", {"key": f"note-{transport}"}, notify=True),
            Call("missing"),
            ("flaky", {"key": f"bad-{transport}", "failures": 1, "error": "invalid"}),
            Call("echo", [1, 2, 3]),
            Call("count", {"key": f"keyed-{transport}"}, idempotency_key=f"bk-{transport}"),
        ]
    )
    assert [o.ok for o in outcomes] == [True, True, False, False, False, True]
    assert outcomes[0].result == {"i": 1}
    assert outcomes[1].result is None
    assert isinstance(outcomes[2].error, MethodNotFoundError)
    assert isinstance(outcomes[3].error, InvalidParamsError)
    assert isinstance(outcomes[4].error, InvalidParamsError)
    assert outcomes[5].result["runs"] == 1
    await poll(lambda: runs(redis, f"note-{transport}"), what="notification ran")
    # The per-item key is honoured: the same batch item again is answered from the store.
    again = await proxy.call_batch(
        [Call("count", {"key": f"keyed-{transport}"}, idempotency_key=f"bk-{transport}")]
    )
    assert again[0].result == outcomes[5].result
    if transport == "http":
        assert edge.edge.metrics.http.get("200") == posts_before + 2, "one POST per batch"


async def test_websocket_batch_is_one_message(lab, edge):
    sent: list[str] = []
    async with WebSocketTransport(edge.url, service="lab") as t:
        ws = await t.connect()
        original = ws.send_str

        async def spy(data, *a, **kw):
            sent.append(data)
            return await original(data, *a, **kw)

        ws.send_str = spy
        outcomes = await t.batch(
            [Call("echo", {"n": n}) for n in range(5)], deadline=time.time() + 5
        )
    assert [o.result for o in outcomes] == [{"n": n} for n in range(5)]
    assert len(sent) == 1 and len(orjson.loads(sent[0])) == 5
