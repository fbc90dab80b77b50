"""InProcessService on its own (no sockets): the bounds and the key bookkeeping."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from spark.errors import OverloadedError, RpcTimeoutError, ServiceUnavailableError
from spark.runtime.inprocess import InProcessService


class Node:
    def __init__(self):
        self.release = asyncio.Event()
        self.calls = 0

    async def handle_rpc(self, method, params, call):
        self.calls += 1
        if method == "wait":
            await self.release.wait()
        if method == "fail_retryable":
            raise OverloadedError("busy")
        return {"method": method, "client": call.client_id}


def soon(seconds: float = 10.0) -> float:
    return time.time() + seconds


async def test_a_result_comes_back_encoded_once():
    service = InProcessService(Node(), "svc")
    result = await service.call("svc", "echo", {}, deadline=soon(), client_id="c1")
    assert isinstance(result, orjson.Fragment)
    assert orjson.loads(orjson.dumps(result)) == {"method": "echo", "client": "c1"}


async def test_past_the_backlog_requests_are_refused_as_overloaded():
    node = Node()
    service = InProcessService(node, "svc", concurrency=1, max_backlog=1)
    running = asyncio.create_task(service.call("svc", "wait", deadline=soon()))
    waiting = asyncio.create_task(service.call("svc", "echo", deadline=soon()))
    await asyncio.sleep(0)  # both reach the service: one runs, one waits for the slot
    with pytest.raises(OverloadedError):
        await service.call("svc", "echo", deadline=soon())
    node.release.set()
    await running
    assert orjson.loads(orjson.dumps(await waiting))["method"] == "echo"


async def test_a_request_whose_deadline_passes_waiting_for_a_slot_never_runs():
    node = Node()
    service = InProcessService(node, "svc", concurrency=1)
    running = asyncio.create_task(service.call("svc", "wait", deadline=soon()))
    await asyncio.sleep(0)
    with pytest.raises(RpcTimeoutError, match="before the request was run"):
        await service.call("svc", "echo", deadline=soon(0.05))
    node.release.set()
    await running
    assert node.calls == 1


async def test_a_retryable_error_is_not_kept_for_the_key():
    node = Node()
    service = InProcessService(node, "svc")
    for _ in range(2):
        with pytest.raises(OverloadedError):
            await service.call("svc", "fail_retryable", deadline=soon(), idempotency_key="k")
    assert node.calls == 2  # the repeat ran again


async def test_a_keyed_request_outlives_its_caller_and_answers_the_retry():
    node = Node()
    service = InProcessService(node, "svc")
    first = asyncio.create_task(service.call("svc", "wait", deadline=soon(), idempotency_key="k"))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    retry = asyncio.create_task(service.call("svc", "wait", deadline=soon(), idempotency_key="k"))
    await asyncio.sleep(0)
    node.release.set()
    assert orjson.loads(orjson.dumps(await retry))["method"] == "wait"
    assert node.calls == 1


async def test_drain_cancels_keyed_runs_left_after_the_grace_period():
    node = Node()
    service = InProcessService(node, "svc", grace=0.05)
    call = asyncio.create_task(service.call("svc", "wait", deadline=soon(), idempotency_key="k"))
    await asyncio.sleep(0)
    await service.drain()
    with pytest.raises(ServiceUnavailableError):
        await call


async def test_only_its_own_service_is_served():
    service = InProcessService(Node(), "svc")
    with pytest.raises(ServiceUnavailableError):
        await service.call("other", "echo", deadline=soon())


async def test_a_timeout_error_the_handler_raises_is_answered_as_is():
    class Raises:
        async def handle_rpc(self, method, params, call):
            raise RpcTimeoutError("upstream timed out", data={"upstream": "x"})

    service = InProcessService(Raises(), "svc")
    with pytest.raises(RpcTimeoutError) as caught:
        await service.call("svc", "m", deadline=soon())
    assert caught.value.message == "upstream timed out"
