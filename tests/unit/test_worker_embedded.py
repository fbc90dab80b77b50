"""A real worker and BrokerClient on the embedded broker (fakeredis in-process, no sockets)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from spark.broker import Envelope, registry, replies
from spark.broker.envelope import FIELD, decode_reply
from spark.broker.keys import GROUP, ServiceKeys, reply_key
from spark.client.broker_client import BrokerClient
from spark.context import current_call
from spark.errors import (
    InternalError,
    InvalidParamsError,
    MethodNotFoundError,
    OverloadedError,
    RpcError,
    RpcTimeoutError,
    ServiceUnavailableError,
)
from spark.graphs import Graph
from spark.nodes import Node
from spark.nodes.rpc import RpcNode
from spark.runtime.worker import Worker, WorkerConfig, run_worker
from support.polling import eventually as wait_until

SECRET = "secret-detail-hunter2"
SERVICE = "lab"
KEYS = ServiceKeys.for_service(SERVICE)


class LabRpcNode(RpcNode):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.runs: Counter[str] = Counter()
        self.active = 0
        self.max_active = 0
        self.started = 0
        self.tokens = asyncio.Semaphore(0)
        self.gate = asyncio.Event()
        self.notified: list[Any] = []

    async def rpc_echo(self, params, context):
        return params

    async def rpc_add(self, a, b, context):
        return a + b

    async def rpc_fail(self, params, context):
        raise ValueError(f"database password is {SECRET}")

    async def rpc_reject(self, params, context):
        raise InvalidParamsError("name is required", data={"field": "name"})

    async def rpc_reject_unencodable(self, params, context):
        raise InvalidParamsError("bad fields", data={"fields": {"a", "b"}})

    async def rpc_count(self, params, context):
        self.runs[params["key"]] += 1
        if params.get("gated"):
            await self.gate.wait()
        return {"runs": self.runs[params["key"]]}

    async def rpc_hold(self, params, context):
        """Runs until the test hands it a token; tracks how many run at once."""
        self.started += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await self.tokens.acquire()
        finally:
            self.active -= 1
        return {"n": params["n"]}

    async def rpc_gated(self, params, context):
        self.active += 1
        try:
            await self.gate.wait()
        finally:
            self.active -= 1
        return {"n": params["n"]}

    async def rpc_not_json(self, params, context):
        return {"value": {1, 2, 3}}

    async def rpc_note(self, params, context):
        self.notified.append(params)

    async def rpc_whoami(self, params, context):
        call = current_call.get()
        return {
            "request_id": call.request_id,
            "client_id": call.client_id,
            "deadline": call.deadline,
            "service": call.service,
            "method": call.method,
            "delivery": call.delivery,
            "remaining": call.remaining(),
            "meta": context.metadata["rpc"],
        }


class Upper(Node):
    async def process(self, context):
        return {"text": str(context.inputs.content.get("text", "")).upper()}


@pytest.fixture
def url(memory_url) -> str:
    # Test names repeat across files; the embedded broker is process-wide, keyed by name.
    return f"{memory_url}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def client(url) -> AsyncIterator[BrokerClient]:
    c = BrokerClient(url)
    try:
        yield c
    finally:
        await c.aclose()


@contextlib.asynccontextmanager
async def serving(
    target: Any, url: str, stop: asyncio.Event | None = None, **options: Any
) -> AsyncIterator[asyncio.Task]:
    stop = stop or asyncio.Event()
    ready = asyncio.Event()
    task = asyncio.create_task(run_worker(target, url=url, stop=stop, ready=ready, **options))
    started = asyncio.create_task(ready.wait())
    await asyncio.wait({task, started}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
    started.cancel()
    if task.done():
        task.result()  # raise what made it stop
    assert ready.is_set(), "worker did not become ready"
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def xlen(client: BrokerClient, key: str) -> int:
    return await client.redis.xlen(key)


# -- calls and errors -------------------------------------------------------------------


async def test_call_returns_result(url, client):
    node = LabRpcNode()
    async with serving(node, url):
        assert await client.call(SERVICE, "echo", {"a": [1, "x"]}, timeout=5) == {"a": [1, "x"]}
        assert await client.call(SERVICE, "add", [2, 3], timeout=5) == 5
        assert await client.call(SERVICE, "echo", timeout=5) == {}
    assert await xlen(client, KEYS.requests) == 0


async def test_concurrent_calls_each_get_their_own_reply(url, client):
    async with serving(LabRpcNode(), url, concurrency=8):
        results = await asyncio.gather(
            *(client.call(SERVICE, "echo", {"i": i}, timeout=5) for i in range(40))
        )
    assert results == [{"i": i} for i in range(40)]


async def test_handler_exception_is_internal_error(url, client, caplog):
    async with serving(LabRpcNode(), url):
        with pytest.raises(InternalError) as info:
            await client.call(SERVICE, "fail", {}, timeout=5)
    assert info.value.code == -32603
    assert SECRET not in repr(info.value.to_dict())
    assert "Traceback" not in repr(info.value.to_dict())
    assert SECRET in caplog.text  # the server's log has it


async def test_method_not_found(url, client):
    async with serving(LabRpcNode(), url):
        with pytest.raises(MethodNotFoundError) as info:
            await client.call(SERVICE, "nope", {}, timeout=5)
        assert info.value.data == {"method": "nope", "available": LabRpcNode().list_methods()}
        for name in ("__init__", "dispatch", "handle_rpc", "stop_server", "rpc.nope", ""):
            with pytest.raises(MethodNotFoundError):
                await client.call(SERVICE, name, {}, timeout=5)


async def test_invalid_params_keeps_data(url, client):
    async with serving(LabRpcNode(), url):
        with pytest.raises(InvalidParamsError) as info:
            await client.call(SERVICE, "reject", {}, timeout=5)
        assert info.value.to_dict() == {
            "code": -32602,
            "message": "name is required",
            "data": {"field": "name"},
        }
        with pytest.raises(InvalidParamsError):
            await client.call(SERVICE, "add", [1], timeout=5)


async def test_non_json_result_is_internal_error(url, client):
    async with serving(LabRpcNode(), url):
        with pytest.raises(InternalError):
            await client.call(SERVICE, "not_json", {}, timeout=5)
        # The worker keeps serving.
        assert await client.call(SERVICE, "echo", {"ok": 1}, timeout=5) == {"ok": 1}


async def test_rpc_error_with_unencodable_data_still_answers(url, client):
    async with serving(LabRpcNode(), url):
        with pytest.raises(RpcError) as info:
            await client.call(SERVICE, "reject_unencodable", {}, timeout=1.0)
    assert not isinstance(info.value, RpcTimeoutError)


async def test_scalar_params_fail_fast(url, client):
    async with serving(LabRpcNode(), url):
        with pytest.raises(RpcError) as info:
            await client.call(SERVICE, "echo", "text", timeout=1.0)
    assert not isinstance(info.value, RpcTimeoutError)


async def test_local_graph_and_worker_answer_alike(url, client):
    node = LabRpcNode()
    async with serving(node, url):
        for method, params in [("echo", {"k": 1}), ("add", [4, 5]), ("reject", {}), ("x", {})]:
            try:
                out = await Graph(start=node).run({"method": method, "params": params})
                local = ("ok", out.content)
            except RpcError as exc:
                local = ("error", type(exc), exc.to_dict())
            try:
                remote = ("ok", await client.call(SERVICE, method, params, timeout=5))
            except RpcError as exc:
                remote = ("error", type(exc), exc.to_dict())
            assert local == remote


async def test_plain_node_is_served_as_process(url, client):
    async with serving(Upper(), url, service="upper"):
        assert await client.call("upper", "process", {"text": "hi"}, timeout=5) == {"text": "HI"}
        with pytest.raises(MethodNotFoundError):
            await client.call("upper", "other", {}, timeout=5)


async def test_worker_class_with_plain_handler(url, client):
    seen = []

    async def handler(method, params, call):
        seen.append((method, call.service, call.client_id))
        return {"method": method, "params": params}

    worker = Worker(handler, WorkerConfig(service="raw", concurrency=2), url)
    task = asyncio.create_task(worker.serve())
    try:
        await asyncio.wait_for(worker.ready.wait(), 5)
        out = await client.call("raw", "any.thing", [1], timeout=5)
        assert out == {"method": "any.thing", "params": [1]}
        assert seen == [("any.thing", "raw", client.client_id)]
        assert await client.live_workers("raw") == 1
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)
    assert worker.processed == 1
    assert await client.live_workers("raw") == 0


# -- notifications -----------------------------------------------------------------------


async def test_notification_runs_handler_without_reply(url, client):
    node = LabRpcNode()
    async with serving(node, url):
        await client.notify(SERVICE, "note", {"x": 1})
        await wait_until(lambda: node.notified, what="the notification to run")
        # Finished entries are acknowledged and deleted.
        await wait_until(
            lambda: _is_zero(xlen(client, KEYS.requests)), what="the entry to be finished"
        )
    assert node.notified == [{"x": 1}]
    assert await client.redis.keys("spark:reply:*") == []
    assert await xlen(client, KEYS.dead) == 0


async def _is_zero(aw) -> bool:
    return (await aw) == 0


# -- deadlines ------------------------------------------------------------------------------


async def test_client_stops_waiting_at_its_deadline(url, client):
    started = time.monotonic()
    with pytest.raises(RpcTimeoutError) as info:
        await client.call(SERVICE, "count", {"key": "late"}, timeout=0.3)
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 3  # at its 0.3 s deadline (nobody serves the service)
    assert info.value.code == -32001
    assert isinstance(info.value, TimeoutError)
    # The request was queued and nobody ran it.
    assert await xlen(client, KEYS.requests) == 1


async def test_worker_answers_expired_work_without_running_it(url, client):
    node = LabRpcNode()
    with pytest.raises(RpcTimeoutError):
        await client.call(SERVICE, "count", {"key": "late"}, timeout=0.05)
    # Another producer's request, already expired, whose reply we can inspect.
    q = client.queue(SERVICE)
    env = Envelope(
        id="old-1",
        method="count",
        params={"key": "late"},
        reply_to="ghost",
        deadline=time.time() - 1,
    )
    await q.enqueue([env.encode()])
    assert await xlen(client, KEYS.requests) == 2

    async with serving(node, url):
        await wait_until(lambda: client.redis.xlen(reply_key("ghost")), what="the ghost's reply")
        await wait_until(lambda: _is_zero(xlen(client, KEYS.requests)), what="entries finished")
    [(_entry_id, fields)] = await client.redis.xrange(reply_key("ghost"))
    rid, result, err = decode_reply(fields[replies.FIELD])
    assert rid == "old-1"
    assert result is None
    assert isinstance(err, RpcTimeoutError)
    assert node.runs["late"] == 0
    assert await xlen(client, KEYS.dead) == 0


async def test_explicit_past_deadline_fails_before_enqueue(client):
    with pytest.raises(RpcTimeoutError):
        await client.call(SERVICE, "echo", {}, deadline=time.time() - 1)
    assert await xlen(client, KEYS.requests) == 0


# -- idempotency -------------------------------------------------------------------------


async def test_idempotency_key_returns_stored_reply(url, client):
    node = LabRpcNode()
    async with serving(node, url):
        first = await client.call(SERVICE, "count", {"key": "a"}, idempotency_key="k1", timeout=5)
        second = await client.call(SERVICE, "count", {"key": "a"}, idempotency_key="k1", timeout=5)
        other = await client.call(SERVICE, "count", {"key": "a"}, idempotency_key="k2", timeout=5)
    assert first == second == {"runs": 1}
    assert other == {"runs": 2}
    assert node.runs["a"] == 2
    assert await client.redis.ttl(KEYS.result("k1")) > 0


async def test_idempotency_key_concurrent_repeat_runs_once(url, client):
    node = LabRpcNode()
    async with serving(node, url, concurrency=4):
        params = {"key": "b", "gated": True}
        calls = [
            asyncio.create_task(
                client.call(SERVICE, "count", params, idempotency_key="same", timeout=5)
            )
            for _ in range(2)
        ]
        await wait_until(lambda: node.runs["b"] == 1, what="the first run")
        await wait_until(
            lambda: _pending_is(client, 2), what="both entries to be delivered to the worker"
        )
        node.gate.set()
        results = await asyncio.gather(*calls)
    assert results == [{"runs": 1}, {"runs": 1}]
    assert node.runs["b"] == 1


async def test_idempotent_error_is_stored_too(url, client):
    node = LabRpcNode()
    async with serving(node, url):
        for _ in range(2):
            with pytest.raises(InvalidParamsError):
                await client.call(SERVICE, "reject", {}, idempotency_key="e1", timeout=5)
    assert await client.redis.exists(KEYS.result("e1")) == 1


async def _pending_is(client: BrokerClient, n: int) -> bool:
    info = await client.redis.xpending(KEYS.requests, GROUP)
    return info["pending"] == n


# -- concurrency and shutdown ------------------------------------------------------------


async def test_concurrency_bounds_handlers_and_reads(url, client):
    node = LabRpcNode()
    total = 6
    async with serving(node, url, concurrency=2):
        calls = [
            asyncio.create_task(client.call(SERVICE, "hold", {"n": i}, timeout=10))
            for i in range(total)
        ]
        for released in range(total):
            expected_active = min(2, total - released)

            async def settled(e=expected_active, r=released) -> bool:
                return (
                    node.active == e
                    and node.started == r + e
                    and await xlen(client, KEYS.requests) == total - r
                )

            await wait_until(settled, what=f"{expected_active} handlers after {released} released")
            # Backpressure: the worker has read only as many entries as it has slots.
            info = await client.redis.xpending(KEYS.requests, GROUP)
            assert info["pending"] == expected_active
            node.tokens.release()
        results = await asyncio.gather(*calls)
    assert sorted(r["n"] for r in results) == list(range(total))
    assert node.max_active == 2


async def test_graceful_stop_finishes_in_flight_work(url, client):
    node = LabRpcNode()
    stop = asyncio.Event()
    async with serving(node, url, stop=stop, concurrency=4) as task:
        calls = [
            asyncio.create_task(client.call(SERVICE, "gated", {"n": i}, timeout=10))
            for i in range(3)
        ]
        await wait_until(lambda: node.active == 3, what="3 handlers running")
        stop.set()

        async def draining() -> bool:
            workers = await registry.live_workers(client.redis, KEYS)
            return any(w.get("state") == "draining" for w in workers.values())

        await wait_until(draining, what="the worker to report draining")
        assert not task.done()
        assert not any(c.done() for c in calls)
        node.gate.set()
        results = await asyncio.gather(*calls)
        await asyncio.wait_for(task, 5)
        assert task.result() is None
    assert [r["n"] for r in results] == [0, 1, 2]
    assert await xlen(client, KEYS.requests) == 0
    assert (await client.redis.xpending(KEYS.requests, GROUP))["pending"] == 0
    assert await client.live_workers(SERVICE) == 0


async def test_stop_with_nothing_in_flight_returns_within_one_read_block(url):
    # Stopping cancels the blocking read; on the embedded broker a read cancelled right
    # after it was issued still runs its whole block, so the bound is read_block_ms.
    stop = asyncio.Event()
    async with serving(LabRpcNode(), url, stop=stop, read_block_ms=200) as task:
        started = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, 5)
        assert time.monotonic() - started < 0.8


# -- bad input and overload ----------------------------------------------------------------


async def test_malformed_envelope_is_dead_lettered_and_worker_keeps_serving(url, client, caplog):
    caplog.set_level(logging.CRITICAL, logger="spark.worker")
    r = client.redis
    async with serving(LabRpcNode(), url):
        await r.xadd(KEYS.requests, {FIELD: b"\x00 this is not json"})
        await r.xadd(KEYS.requests, {FIELD: orjson.dumps({"id": 1, "method": "echo"})})
        await r.xadd(KEYS.requests, {b"not-e": b"{}"})
        await wait_until(lambda: _xlen_is(client, KEYS.dead, 3), what="3 dead letters")
        assert await client.call(SERVICE, "echo", {"still": "alive"}, timeout=5) == {
            "still": "alive"
        }
        await wait_until(lambda: _is_zero(xlen(client, KEYS.requests)), what="stream drained")
    dead = await r.xrange(KEYS.dead)
    assert dead[0][1][FIELD] == b"\x00 this is not json"
    assert orjson.loads(dead[0][1][b"error"])["code"] == -32600
    assert (await r.xpending(KEYS.requests, GROUP))["pending"] == 0


async def test_one_malformed_envelope(url, client, caplog):
    caplog.set_level(logging.CRITICAL, logger="spark.worker")
    async with serving(LabRpcNode(), url):
        await client.redis.xadd(KEYS.requests, {FIELD: b"garbage"})
        await wait_until(lambda: _xlen_is(client, KEYS.dead, 1), what="1 dead letter")
        assert await client.call(SERVICE, "add", [1, 1], timeout=5) == 2
    assert await xlen(client, KEYS.dead) == 1


async def _xlen_is(client: BrokerClient, key: str, n: int) -> bool:
    return await client.redis.xlen(key) == n


async def test_full_backlog_refuses_with_overloaded(client):
    client.queue("svc").max_backlog = 2
    await client.notify("svc", "m", {"i": 1})
    await client.notify("svc", "m", {"i": 2})
    with pytest.raises(OverloadedError) as info:
        await client.notify("svc", "m", {"i": 3})
    assert info.value.retryable
    assert info.value.data == {"service": "svc"}
    with pytest.raises(OverloadedError):
        await client.call("svc", "m", {}, timeout=2)
    assert await client.redis.xlen(ServiceKeys.for_service("svc").requests) == 2


async def test_full_backlog_in_one_batch_refuses_only_the_excess(client):
    client.queue("svc").max_backlog = 2
    results = await asyncio.gather(
        *(client.notify("svc", "m", {"i": i}) for i in range(3)), return_exceptions=True
    )
    assert results[:2] == [None, None]
    assert isinstance(results[2], OverloadedError)


# -- what a handler knows about its call ---------------------------------------------------


async def test_current_call_inside_handler(url, client):
    async with serving(LabRpcNode(), url):
        before = time.time()
        out = await client.call(SERVICE, "whoami", {}, timeout=7, request_id="req-42")
    assert out["request_id"] == "req-42"
    assert out["client_id"] == client.client_id
    assert out["service"] == SERVICE
    assert out["method"] == "whoami"
    assert out["delivery"] == 1
    assert before + 6 < out["deadline"] <= time.time() + 7
    assert 0 < out["remaining"] <= 7
    assert out["meta"]["request_id"] == "req-42"
    assert out["meta"]["client_id"] == client.client_id
    assert out["meta"]["deadline"] == out["deadline"]
    assert current_call.get() is None


async def test_explicit_deadline_reaches_the_handler(url, client):
    deadline = time.time() + 4.5
    async with serving(LabRpcNode(), url):
        out = await client.call(SERVICE, "whoami", {}, deadline=deadline)
    assert out["deadline"] == pytest.approx(deadline)


# -- liveness ------------------------------------------------------------------------------


async def test_require_workers_without_worker_fails_fast(client):
    started = time.monotonic()
    with pytest.raises(ServiceUnavailableError) as info:
        await client.call(SERVICE, "echo", {}, timeout=5, require_workers=True)
    assert time.monotonic() - started < 2.5  # not the 5 s timeout
    assert info.value.retryable
    assert await xlen(client, KEYS.requests) == 0


async def test_require_workers_shares_one_lookup_among_concurrent_calls(url, client, monkeypatch):
    lookups = Counter()
    live_count = registry.live_count

    async def counted(redis, keys):
        lookups[keys.service] += 1
        return await live_count(redis, keys)

    monkeypatch.setattr(registry, "live_count", counted)
    async with serving(LabRpcNode(), url):
        out = await asyncio.gather(
            *(
                client.call(SERVICE, "echo", {"i": i}, timeout=5, require_workers=True)
                for i in range(50)
            )
        )
    assert out == [{"i": i} for i in range(50)]
    assert lookups[SERVICE] == 1  # not one per call waiting for the first answer


async def test_require_workers_with_worker(url, client):
    async with serving(LabRpcNode(), url):
        out = await client.call(SERVICE, "echo", {"ok": 1}, timeout=5, require_workers=True)
    assert out == {"ok": 1}
