"""SQLiteBackend across separate processes sharing one file."""

from __future__ import annotations

import asyncio
import os

import pytest

from spark.state import GraphState, SQLiteBackend
from support.state_child import Child

pytestmark = pytest.mark.integration


async def _read(path, key: str):
    backend = SQLiteBackend(path)
    try:
        return await GraphState(backend=backend).get(key)
    finally:
        await backend.aclose()


def test_four_processes_250_transactional_increments_each(tmp_path):
    spec = {"kind": "sqlite", "path": str(tmp_path / "state.db")}
    children = [Child(spec) for _ in range(4)]
    try:
        pids = {child.pid for child in children}
        assert len(pids) == 4 and os.getpid() not in pids
        for child in children:
            child.send(op="tx_increments", key="n", n=250)
        for child in children:
            child.recv()
    finally:
        for child in children:
            child.close()
    assert asyncio.run(_read(tmp_path / "state.db", "n")) == 1000


def test_two_services_in_separate_processes_see_each_others_writes(tmp_path):
    # The seed's "Distributed GraphState" example: two services, one SQLite file.
    spec = {"kind": "sqlite", "path": str(tmp_path / "shared" / "graph_state.db")}
    service1, service2 = Child(spec), Child(spec)
    try:
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


async def test_transaction_in_one_process_blocks_writers_in_another(tmp_path):
    path = tmp_path / "state.db"
    state = GraphState({"n": 0}, backend=SQLiteBackend(path))
    await state.get("n")  # creates the file and applies initial_state
    child = Child({"kind": "sqlite", "path": str(path)})
    try:
        async with state.transaction() as tx:
            child.send(op="increment", key="n")  # must wait for this transaction
            # Time for the child to reach SQLite's lock: its busy-wait inside SQLite is not
            # observable from here, and a later request would queue behind it.
            await asyncio.sleep(0.3)
            tx["n"] = tx["n"] + 10
        answer = await asyncio.to_thread(child.recv)
        assert answer["ok"] == 11
    finally:
        child.close()
    assert await state.get("n") == 11
    await state.backend.aclose()
