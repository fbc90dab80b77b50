"""Faults, round 2 (issue 12, item 9): the smaller findings, each against a real redis-server.

Passwords never reach error texts or logs; a worker that stops cleanly leaves no consumer
behind; only class-defined `rpc_*` methods are callable; an envelope nested past the JSON
decoder's depth is answered; budgets are capped; an evicting Redis is warned about.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest
import redis.asyncio as aioredis

from spark.broker import ServiceQueue, replies
from spark.broker.envelope import decode_reply
from spark.broker.keys import GROUP, ServiceKeys
from spark.client.broker_client import BrokerClient
from spark.context import current_call
from spark.errors import MethodNotFoundError, RpcConnectionError
from spark.nodes.rpc import RpcNode
from spark.runtime.edge import EdgeConfig, EdgeServer
from spark.runtime.worker import Worker, WorkerConfig, run_worker
from support.lab import report
from support.polling import eventually
from support.redis_server import free_port

pytestmark = pytest.mark.timeout(60)

KEYS = ServiceKeys.for_service("lab")


async def remaining(method, params, call):
    if method == "remaining":
        return {"remaining": current_call.get().remaining()}
    return params


@contextlib.asynccontextmanager
async def worker_on(url: str, handler=remaining, **options):
    worker = Worker(handler, WorkerConfig(service="lab", **options), url)
    task = asyncio.create_task(worker.serve())
    await eventually(lambda: worker.ready.is_set() or task.done(), what="worker ready")
    assert not task.done(), task.exception()
    try:
        yield worker
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)


async def test_a_redis_password_never_reaches_errors_or_edge_logs(caplog):
    url = f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"  # nothing listens there
    async with BrokerClient(url) as client:
        with pytest.raises(RpcConnectionError) as err:
            await client.call("lab", "echo", timeout=5)
    edge = await EdgeServer(EdgeConfig(redis_url=url, port=0, default_service="lab")).start()
    try:
        import aiohttp

        with caplog.at_level(logging.WARNING, logger="spark"):
            async with aiohttp.ClientSession() as http:
                body = {"jsonrpc": "2.0", "id": 1, "method": "echo"}
                async with http.post(f"{edge.url}/lab", json=body) as resp:
                    answer = await resp.text()
    finally:
        await edge.stop()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "s3cret-pw" not in str(err.value)
    assert "***" in str(err.value)
    assert "s3cret-pw" not in logged and "s3cret-pw" not in answer


async def test_a_cleanly_stopped_worker_leaves_no_consumer(redis_url):
    r = aioredis.Redis.from_url(redis_url)
    try:
        async with worker_on(redis_url) as worker:
            async with BrokerClient(redis_url) as client:
                assert await client.call("lab", "echo", {"a": 1}, timeout=10) == {"a": 1}
            consumer = worker.consumer
            during = [c["name"].decode() for c in await r.xinfo_consumers(KEYS.requests, GROUP)]
        after = [c["name"].decode() for c in await r.xinfo_consumers(KEYS.requests, GROUP)]
    finally:
        await r.aclose()
    report("consumer_left_behind", during=len(during), after=len(after))
    assert consumer in during
    assert after == []


class Exposed(RpcNode):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.rpc_secret = lambda params, context: {"leaked": True}

    async def rpc_echo(self, params, context):
        return params


async def test_only_class_defined_rpc_methods_are_callable(redis_url):
    node = Exposed()
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        run_worker(node, service="lab", url=redis_url, stop=stop, ready=ready)
    )
    try:
        await eventually(ready.is_set, what="worker ready")
        async with BrokerClient(redis_url) as client:
            assert await client.call("lab", "echo", {"a": 1}, timeout=10) == {"a": 1}
            with pytest.raises(MethodNotFoundError):
                await client.call("lab", "secret", {}, timeout=10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert "secret" not in node.list_methods()


async def test_an_envelope_nested_too_deep_is_answered(redis_url):
    depth = 5000
    raw = (
        b'{"id":"deep-1","method":"echo","params":'
        + b"[" * depth
        + b"]" * depth
        + b',"reply_to":"probe","timeout":10}'
    )
    r = aioredis.Redis.from_url(redis_url)
    try:
        async with worker_on(redis_url):
            await ServiceQueue(r, "lab").enqueue([raw])

            async def answer():
                got = await replies.read(r, "probe", replies.START, 0.1)
                return got[0][1] if got else None

            reply = await eventually(answer, what="an answer to the deep envelope")
        dead = await r.xlen(KEYS.dead)
    finally:
        await r.aclose()
    rid, _result, error = decode_reply(reply)
    report("deep_json_envelope", depth=depth, code=error.code, dead_lettered=dead)
    assert rid == "deep-1"
    assert error.code == -32600


async def test_an_absurd_budget_is_capped(redis_url):
    async with worker_on(redis_url):
        async with BrokerClient(redis_url) as client:
            got = await client.call("lab", "remaining", {}, timeout=1e300)
    assert 0 < got["remaining"] <= 86_400  # a day at most


async def test_an_evicting_redis_is_warned_about(redis_url, caplog):
    r = aioredis.Redis.from_url(redis_url)
    try:
        await r.config_set("maxmemory", str(512 * 1024 * 1024))
        await r.config_set("maxmemory-policy", "allkeys-lru")
        with caplog.at_level(logging.WARNING, logger="spark.worker"):
            async with worker_on(redis_url):
                pass
    finally:
        await r.config_set("maxmemory", "0")
        await r.config_set("maxmemory-policy", "noeviction")
        await r.aclose()
    assert any("allkeys-lru" in rec.getMessage() for rec in caplog.records)


async def test_fresh_work_goes_on_while_a_dead_workers_entries_are_reclaimed(redis_url):
    """A worker dies holding three 3-second requests; the survivor reclaims them one at a
    time. Fresh echoes sent meanwhile are answered before those reclaims are done."""
    from support.lab import TARGET
    from support.processes import WorkerProcess

    flags = ("--reclaim-after", "1", "--concurrency", "4")
    doomed = WorkerProcess(TARGET, redis_url, *flags, service="lab")
    survivor = None
    r = aioredis.Redis.from_url(redis_url)
    client = BrokerClient(redis_url)
    try:
        await asyncio.to_thread(doomed.wait_ready, 1, 30.0)
        keys = [f"reclaim:{i}" for i in range(3)]
        calls = [
            asyncio.create_task(client.call("lab", "sleep", {"seconds": 3, "count": k}, timeout=60))
            for k in keys
        ]

        async def runs() -> list[int]:
            return [int(v or 0) for v in await r.mget([f"lab:runs:{k}" for k in keys])]

        await eventually(lambda: _all(runs(), 1), what="the doomed worker running all three")
        survivor = WorkerProcess(TARGET, redis_url, *flags, service="lab")
        await asyncio.to_thread(survivor.wait_ready, 2, 30.0)
        doomed.kill()
        await eventually(lambda: _any(runs(), 2), timeout=30, what="a reclaim started")
        # The first may ride on a read issued before the reclaim began; the second cannot.
        await client.call("lab", "echo", {"fresh": 1}, timeout=30)
        echo = await client.call("lab", "echo", {"fresh": True}, timeout=30)
        unfinished = sum(1 for t in calls if not t.done())
        await asyncio.wait_for(asyncio.gather(*calls), 60)
    finally:
        await client.aclose()
        await r.aclose()
        doomed.stop()
        if survivor is not None:
            survivor.stop()
    report("fresh_work_during_reclaim", reclaimed=3, unfinished_when_echo_answered=unfinished)
    assert echo == {"fresh": True}
    # The echo did not wait for the reclaims to end (they run one at a time, 3 s each).
    assert unfinished >= 1


async def _all(values, n: int) -> bool:
    return all(v >= n for v in await values)


async def _any(values, n: int) -> bool:
    return any(v >= n for v in await values)
