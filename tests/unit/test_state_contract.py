"""GraphState contract on MemoryBackend, SQLiteBackend (a temp file) and RedisBackend
(on the embedded fakeredis broker), plus what is specific to each backend."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid

import pytest

from spark.broker.connection import connect
from spark.broker.keys import state_key
from spark.broker.state import StateStore
from spark.state import (
    GraphState,
    MemoryBackend,
    RedisBackend,
    SQLiteBackend,
    StateConflictError,
    StateLockTimeout,
    StateTransaction,
)
from support.polling import eventually
from support.state_contract import Backends, StateContract


def memory_url() -> str:
    return f"memory://state-{uuid.uuid4().hex}"


class TestStateContract(StateContract):
    @pytest.fixture(params=["memory", "sqlite", "redis"])
    async def backends(self, request, tmp_path):
        if request.param == "memory":
            made = Backends.memory()
        elif request.param == "sqlite":
            made = Backends.sqlite(tmp_path / "state.db")
        else:
            made = Backends.redis(memory_url())
        yield made
        await made.aclose()


# -- imports and layering ------------------------------------------------------------------


def test_seed_import_path():
    from spark.graphs.graph_state import GraphState as SeedGraphState
    from spark.graphs.graph_state import SQLiteBackend as SeedSQLiteBackend

    assert SeedGraphState is GraphState
    assert SeedSQLiteBackend is SQLiteBackend


def test_state_layer_imports_no_nodes_or_graphs():
    code = (
        "import sys, spark.state\n"
        "bad = [m for m in sys.modules if m.startswith(('spark.graphs', 'spark.nodes'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_seed_module_level_backend_needs_no_event_loop(tmp_path):
    # The seed builds the backend at import time and GraphState in a sync __init__.
    shared = SQLiteBackend(tmp_path / "nested" / "graph_state.db")
    state = GraphState({"visits": 0}, backend=shared)

    async def use() -> int:
        return await state.increment("visits")

    assert asyncio.run(use()) == 1
    assert asyncio.run(use()) == 2  # a second event loop, same backend


def test_redis_backend_survives_a_new_event_loop():
    state = GraphState(backend=RedisBackend(memory_url(), namespace="loops"))
    assert asyncio.run(state.increment("n")) == 1
    assert asyncio.run(state.increment("n")) == 2


async def test_memory_initial_state_is_applied_at_construction():
    backend = MemoryBackend()
    GraphState({"a": 1}, backend=backend)
    assert await backend.snapshot() == {"a": b"1"}


async def test_transaction_type():
    state = GraphState()
    async with state.transaction() as tx:
        assert isinstance(tx, StateTransaction)


# -- SQLite specifics ----------------------------------------------------------------------


@pytest.mark.parametrize("path", [":memory:", ""])
def test_sqlite_needs_a_file(path):
    with pytest.raises(ValueError, match="MemoryBackend"):
        SQLiteBackend(path)


async def test_sqlite_namespaces_share_a_file_but_not_keys(tmp_path):
    a = GraphState(backend=SQLiteBackend(tmp_path / "s.db", "a"))
    b = GraphState(backend=SQLiteBackend(tmp_path / "s.db", "b"))
    await a.set("k", "in a")
    assert await b.get("k") is None
    async with b.transaction() as tx:
        tx["k"] = "in b"
    assert await a.get("k") == "in a"
    assert await a.keys() == ["k"] and await b.keys() == ["k"]
    await a.backend.aclose()
    await b.backend.aclose()


async def test_sqlite_file_is_readable_without_spark(tmp_path):
    import sqlite3

    backend = SQLiteBackend(tmp_path / "s.db")
    await GraphState(backend=backend).set("k", {"a": [1]})
    await backend.aclose()
    with sqlite3.connect(tmp_path / "s.db") as conn:
        rows = conn.execute("SELECT namespace, key, value FROM spark_state").fetchall()
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert rows == [("default", "k", b'{"a":[1]}')]
    assert mode == "wal"


# -- Redis specifics (fakeredis) -----------------------------------------------------------


def test_redis_backend_attributes():
    url = memory_url()
    backend = RedisBackend(url, namespace="orders-42", ttl=60)
    assert (backend.url, backend.namespace, backend.ttl) == (url, "orders-42", 60)
    client = connect(url)
    assert RedisBackend(client).url is None
    assert RedisBackend(client).namespace == "default"


@pytest.mark.parametrize("namespace", ["", "has space", "br{ace}", "x" * 201, 7])
def test_redis_namespace_is_checked(namespace):
    with pytest.raises(ValueError, match="namespace"):
        RedisBackend(memory_url(), namespace=namespace)


@pytest.mark.parametrize("ttl", [0, -1])
def test_redis_ttl_is_checked(ttl):
    with pytest.raises(ValueError, match="ttl"):
        RedisBackend(memory_url(), ttl=ttl)


async def test_redis_layout_is_one_hash_of_json():
    url = memory_url()
    state = GraphState(backend=RedisBackend(url, namespace="wf-1"))
    await state.update({"a": {"b": 1}, "n": 1})
    await state.increment("n", 2)
    raw = connect(url)
    assert await raw.hgetall("spark:state:{wf-1}") == {b"a": b'{"b":1}', b"n": b"3"}
    assert await raw.keys("*") == [b"spark:state:{wf-1}"]


async def test_redis_given_client_is_used_and_left_open():
    url = memory_url()
    client = connect(url)
    backend = RedisBackend(client, namespace="given")
    await GraphState(backend=backend).set("k", 1)
    await backend.aclose()
    assert await client.hget("spark:state:{given}", "k") == b"1"


async def test_redis_works_with_a_decoding_client():
    from fakeredis import aioredis as fake_aioredis

    client = fake_aioredis.FakeRedis(decode_responses=True)
    state = GraphState(backend=RedisBackend(client, namespace="dec"))
    await state.update({"a": {"x": "é"}, "n": 1})
    assert await state.get("a") == {"x": "é"}
    assert await state.increment("n") == 2
    async with state.transaction() as tx:
        tx["a"]["y"] = 1
    assert await state.get_snapshot() == {"a": {"x": "é", "y": 1}, "n": 2}


async def test_redis_namespaces_are_separate():
    url = memory_url()
    a = GraphState(backend=RedisBackend(url, namespace="a"))
    b = GraphState(backend=RedisBackend(url, namespace="b"))
    async with a.transaction() as tx:
        tx["k"] = 1
        await b.set("k", 2)  # another namespace is not locked
    assert (await a.get("k"), await b.get("k")) == (1, 2)


async def test_redis_ttl_expires_the_namespace_after_the_last_write():
    """Time is moved by shortening the key's expiry, not by sleeping through a short TTL."""
    url = memory_url()
    backend = RedisBackend(url, namespace="ttl", ttl=60)
    state = GraphState(backend=backend)
    redis = connect(url)
    key = state_key("ttl")
    await state.set("k", 1)
    remaining = await backend.ttl_remaining()
    assert remaining is not None and 0 < remaining <= 60
    await redis.pexpire(key, 5_000)  # as if 55 s had passed
    await state.increment("n")  # a write pushes expiry back to the full TTL
    assert await redis.pttl(key) > 5_000
    assert await state.get("k") == 1
    await redis.pexpire(key, 1)  # as if the whole TTL had passed since the last write
    assert await eventually(lambda: _expired(state), timeout=5, what="the namespace to expire")
    assert await RedisBackend(memory_url()).ttl_remaining() is None
    await redis.aclose()


async def _expired(state: GraphState) -> bool:
    return await state.get_snapshot() == {}


async def test_redis_commit_is_fenced_when_the_lock_was_lost():
    url = memory_url()
    backend = RedisBackend(url, namespace="fence")
    state = GraphState(backend=backend)
    await state.set("n", 1)
    with pytest.raises(StateConflictError, match="nothing was applied"):
        async with state.transaction() as tx:
            tx["n"] = 2
            # The lease ran out and another transaction took the lock meanwhile.
            await connect(url).set("spark:state:{fence}:lock", "someone-else")
    assert await state.get("n") == 1


async def test_redis_lease_is_renewed_while_the_block_runs():
    url = memory_url()
    raw = connect(url)
    state = GraphState(backend=RedisBackend(url, namespace="renew", lease=0.3))
    renewals, last_ttl = 0, 10**9

    async def renewed_nine_times() -> bool:
        nonlocal renewals, last_ttl
        ttl = await raw.pttl("spark:state:{renew}:lock")
        assert ttl > 0, "the lock expired while the block ran"
        renewals += ttl > last_ttl
        last_ttl = ttl
        return renewals >= 9

    async with state.transaction() as tx:
        # The block outlives its 0.3 s lease three times over (a renewal every lease / 3).
        await eventually(renewed_nine_times, timeout=15, what="nine renewals", interval=0.01)
        tx["n"] = 1
    assert await state.get("n") == 1
    await raw.aclose()


async def test_redis_lock_of_a_crashed_holder_expires():
    url = memory_url()
    await connect(url).set("spark:state:{crash}:lock", "dead-holder", px=300)
    state = GraphState(backend=RedisBackend(url, namespace="crash"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with state.transaction() as tx:
        tx["n"] = 1
    assert loop.time() - started >= 0.2
    assert await state.increment("n") == 2


async def test_redis_waiting_for_the_lock_is_bounded():
    url = memory_url()
    await connect(url).set("spark:state:{busy}:lock", "holder", px=60_000)
    state = GraphState(backend=RedisBackend(url, namespace="busy", lock_wait=0.2))
    with pytest.raises(StateLockTimeout):
        await state.set("k", 1)
    with pytest.raises(TimeoutError):
        async with state.transaction():
            pass
    assert await state.get("k") is None  # reads never wait


async def test_redis_cancelled_while_waiting_for_the_lock_leaves_no_lock(monkeypatch):
    tries = 0
    real_try_begin = StateStore.try_begin

    async def counting_try_begin(self, *args, **kwargs):
        nonlocal tries
        tries += 1
        return await real_try_begin(self, *args, **kwargs)

    monkeypatch.setattr(StateStore, "try_begin", counting_try_begin)
    url = memory_url()
    raw = connect(url)
    await raw.set("spark:state:{cancel}:lock", "holder", px=60_000)
    state = GraphState(backend=RedisBackend(url, namespace="cancel"))

    async def wait_for_lock():
        async with state.transaction() as tx:
            tx["never"] = 1

    task = asyncio.create_task(wait_for_lock())
    # Found the lock held and tried again: it is waiting for the lock.
    await eventually(lambda: tries >= 2, timeout=5, what="two tries for the lock")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await raw.delete("spark:state:{cancel}:lock")
    tries_when_cancelled = tries
    # A waiter left behind would take the freed lock and hold it for its lease (longer than
    # the 5 s bound here); a transaction that gets it proves none is left.
    async with asyncio.timeout(5):
        async with state.transaction() as tx:
            tx["n"] = 1
    assert tries == tries_when_cancelled + 1  # only that transaction tried
    assert not await raw.exists("spark:state:{cancel}:lock")
    assert await state.get_snapshot() == {"n": 1}
