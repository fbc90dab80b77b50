"""GraphState on a real redis-server: the contract, separate processes, TTL, failures."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from spark.broker.connection import connect
from spark.broker.keys import state_key
from spark.state import GraphState, RedisBackend, StateConnectionError, StateError
from support.polling import eventually
from support.redis_server import free_port
from support.state_child import Child
from support.state_contract import Backends, StateContract

pytestmark = [pytest.mark.integration, pytest.mark.topologies()]


class TestRedisStateContract(StateContract):
    @pytest.fixture
    async def backends(self, redis_url):
        made = Backends.redis(redis_url)
        yield made
        await made.aclose()


async def _read(url: str, namespace: str, key: str):
    backend = RedisBackend(url, namespace=namespace)
    try:
        return await GraphState(backend=backend).get(key)
    finally:
        await backend.aclose()


def test_four_processes_250_transactional_increments_each(redis_url):
    spec = {"kind": "redis", "url": redis_url, "namespace": "counter"}
    children = [Child(spec) for _ in range(4)]
    try:
        pids = {child.pid for child in children}
        assert len(pids) == 4 and os.getpid() not in pids
        for child in children:  # all four start together and contend for the lock
            child.send(op="tx_increments", key="n", n=250)
        for child in children:
            child.recv()
    finally:
        for child in children:
            child.close()
    assert asyncio.run(_read(redis_url, "counter", "n")) == 1000


def test_two_services_in_separate_processes_see_each_others_writes(redis_url):
    # The seed's Service1RpcNode / Service2RpcNode, each in its own process, each with its
    # own GraphState(backend=RedisBackend(...)) built in a synchronous __init__.
    spec = {"kind": "redis", "url": redis_url, "namespace": "shared"}
    service1, service2 = Child(spec), Child(spec)
    try:
        assert service1.pid != service2.pid
        for i in range(20):
            service1.call(op="set", key="k", value={"from": "service1", "i": i})
            assert service2.call(op="get", key="k") == {"from": "service1", "i": i}
            service2.call(op="set", key="k", value=["service2", i])
            assert service1.call(op="get", key="k") == ["service2", i]
        assert service1.call(op="increment", key="hits") == 1
        assert service2.call(op="increment", key="hits") == 2
    finally:
        service1.close()
        service2.close()


async def test_raising_transaction_changes_nothing_and_frees_the_namespace(redis_url):
    state = GraphState({"n": 1}, backend=RedisBackend(redis_url, namespace="raise"))
    with pytest.raises(RuntimeError, match="boom"):
        async with state.transaction() as tx:
            tx["n"] = 2
            tx["other"] = 3
            raise RuntimeError("boom")
    assert await state.get_snapshot() == {"n": 1}
    assert await connect(redis_url).exists("spark:state:{raise}:lock") == 0
    await state.backend.aclose()


async def test_ttl(redis_url):
    """Time is moved by shortening the key's expiry, not by sleeping through a short TTL."""
    backend = RedisBackend(redis_url, namespace="ttl", ttl=60)
    state = GraphState(backend=backend)
    redis = connect(redis_url)
    key = state_key("ttl")
    await state.set("k", 1)
    assert 0 < await redis.pttl(key) <= 60_000
    await redis.pexpire(key, 5_000)  # as if 55 s had passed
    async with state.transaction() as tx:
        tx["k"] = 2
    assert await redis.pttl(key) > 5_000  # a transaction's write pushes expiry back
    await redis.pexpire(key, 5_000)
    assert await state.increment("n") == 1
    assert await redis.pttl(key) > 5_000  # so does every other write
    assert await state.get_snapshot() == {"k": 2, "n": 1}
    await redis.pexpire(key, 1)  # as if the whole TTL had passed since the last write
    assert await eventually(lambda: _expired(state), timeout=5, what="the namespace to expire")
    await redis.aclose()
    await backend.aclose()


async def _expired(state: GraphState) -> bool:
    return await state.get_snapshot() == {}


async def test_scripts_reload_after_script_flush(redis_url):
    state = GraphState(backend=RedisBackend(redis_url, namespace="flush"))
    await state.set("a", 1)
    await connect(redis_url).script_flush()
    assert await state.increment("a") == 2
    async with state.transaction() as tx:
        tx["a"] += 1
    assert await state.get("a") == 3
    await state.backend.aclose()


async def test_unreachable_redis_is_a_state_connection_error():
    backend = RedisBackend(f"redis://127.0.0.1:{free_port()}/0", namespace="down")
    state = GraphState(backend=backend)
    started = time.monotonic()
    with pytest.raises(StateConnectionError) as caught:
        await state.set("k", 1)
    assert isinstance(caught.value, StateError) and isinstance(caught.value, ConnectionError)
    with pytest.raises(StateConnectionError):
        await state.get("k")
    assert time.monotonic() - started < 30
    await backend.aclose()
