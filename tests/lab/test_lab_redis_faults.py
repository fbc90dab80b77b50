"""Faults, round 2 (issue 12): idempotency that holds, workers that survive Redis surprises,
relative deadlines, a worker that stops while Redis is down.

Every test runs against its own real redis-server (they change its configuration: maxmemory,
REPLICAOF) and prints its figures (`LAB ...` lines, see `make lab`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

import aiohttp
import pytest
import redis.asyncio as aioredis

from spark.broker import registry
from spark.broker.keys import ServiceKeys
from spark.client.broker_client import BrokerClient
from spark.errors import (
    InvalidRequestError,
    OverloadedError,
    RpcError,
    RpcTimeoutError,
)
from spark.runtime.edge import EdgeConfig, EdgeServer
from spark.runtime.worker import Worker, WorkerConfig
from support.lab import own_redis, report
from support.polling import eventually
from support.processes import WorkerProcess, env
from support.redis_server import free_port

pytestmark = pytest.mark.timeout(120)

KEYS = ServiceKeys.for_service("lab")


class LabHandler:
    """The handler of an in-process worker: echo, count runs, sleep, fail with a timeout."""

    def __init__(self, url: str):
        self.redis = aioredis.Redis.from_url(url)

    async def __call__(self, method, params, call):
        if method == "echo":
            return params
        if method == "count":
            return {"runs": await self.redis.incr(f"lab:runs:{params['key']}")}
        if method == "sleep":
            runs = await self.redis.incr(f"lab:runs:{params['key']}")
            await asyncio.sleep(params["seconds"])
            return {"runs": runs}
        if method == "upstream_timeout":
            raise RpcTimeoutError("the upstream service timed out", data={"upstream": "x"})
        raise RpcError("no such method", code=-32601)

    async def aclose(self):
        await self.redis.aclose()


@contextlib.asynccontextmanager
async def in_process_worker(url: str, **options):
    handler = LabHandler(url)
    worker = Worker(handler, WorkerConfig(service="lab", **options), url)
    task = asyncio.create_task(worker.serve())
    try:
        await eventually(lambda: worker.ready.is_set() or task.done(), what="worker ready")
        assert not task.done(), task.exception()
        yield worker, task
    finally:
        worker.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)
        await handler.aclose()


async def runs(url: str, key: str) -> int:
    r = aioredis.Redis.from_url(url)
    try:
        return int(await r.get(f"lab:runs:{key}") or 0)
    finally:
        await r.aclose()


# -- item 1: a key means one run, however long the handler takes ----------------------------


async def test_idempotency_one_run_when_handler_outlives_the_marker_lease():
    """5 callers share one key; the handler (3 s) outlives 2 x reclaim_after (2 s)."""
    with own_redis() as server:
        async with in_process_worker(server.url, reclaim_after=1.0, concurrency=8):
            async with BrokerClient(server.url) as client:
                started = time.monotonic()
                results = await asyncio.gather(
                    *(
                        client.call(
                            "lab",
                            "sleep",
                            {"key": "idem", "seconds": 3.0},
                            idempotency_key="one-key",
                            timeout=30,
                        )
                        for _ in range(5)
                    )
                )
                elapsed = time.monotonic() - started
            ran = await runs(server.url, "idem")
    report("idempotency_long_handler", callers=5, handler_s=3.0, lease_s=2.0, runs=ran, s=elapsed)
    assert ran == 1
    assert all(r == {"runs": 1} for r in results)


# -- item 2: a key is bound to its request and scoped to its caller ---------------------------


async def test_idempotency_key_reused_for_another_request_is_refused():
    with own_redis() as server:
        async with in_process_worker(server.url):
            async with BrokerClient(server.url) as client:
                first = await client.call("lab", "count", {"key": "a"}, idempotency_key="k")
                again = await client.call("lab", "count", {"key": "a"}, idempotency_key="k")
                # Same params in another key order: the same request.
                other_order = await client.call(
                    "lab", "echo", {"x": 1, "y": 2}, idempotency_key="k2"
                )
                same_reordered = await client.call(
                    "lab", "echo", {"y": 2, "x": 1}, idempotency_key="k2"
                )
                refused = []
                for method, params in (("echo", {"key": "a"}), ("count", {"key": "b"})):
                    with pytest.raises(InvalidRequestError) as err:
                        await client.call("lab", method, params, idempotency_key="k")
                    refused.append(err.value.code)
            ran_a, ran_b = await runs(server.url, "a"), await runs(server.url, "b")
    report("idempotency_binding", reused_other_request_refused=len(refused), runs_a=ran_a)
    assert first == again == {"runs": 1}
    assert other_order == same_reordered == {"x": 1, "y": 2}
    assert refused == [-32600, -32600]
    assert (ran_a, ran_b) == (1, 0)


async def test_idempotency_keys_are_scoped_per_principal_at_the_edge():
    with own_redis() as server:
        async with in_process_worker(server.url):
            edge = await EdgeServer(
                EdgeConfig(
                    redis_url=server.url,
                    port=0,
                    default_service="lab",
                    auth_tokens=["token-a", "token-b"],
                )
            ).start()
            try:
                async with aiohttp.ClientSession() as http:

                    async def call(token: str) -> dict:
                        body = {"jsonrpc": "2.0", "id": 1, "method": "count"}
                        body["params"] = {"key": "shared"}
                        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "K"}
                        async with http.post(f"{edge.url}/lab", json=body, headers=headers) as r:
                            return await r.json()

                    a1 = await call("token-a")
                    a2 = await call("token-a")
                    b1 = await call("token-b")
            finally:
                await edge.stop()
            ran = await runs(server.url, "shared")
    report("idempotency_per_principal", principals=2, runs=ran)
    assert a1["result"] == a2["result"] == {"runs": 1}
    assert b1["result"] == {"runs": 2}  # B's own run, not A's stored reply
    assert ran == 2


# -- item 3: the stream or group disappears under an idle worker ------------------------------


async def _unblock_reader(r: aioredis.Redis) -> None:
    for line in (await r.execute_command("CLIENT", "LIST")).decode().splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if fields.get("cmd") == "xreadgroup":
            await r.execute_command("CLIENT", "UNBLOCK", fields["id"], "ERROR")
            return
    raise AssertionError("no client blocked in XREADGROUP")


async def _blocked_reader(r: aioredis.Redis) -> bool:
    text = (await r.execute_command("CLIENT", "LIST")).decode()
    return "cmd=xreadgroup" in text


@pytest.mark.parametrize("how", ["del", "flushall", "client_unblock"])
async def test_idle_worker_survives_its_stream_vanishing(how):
    with own_redis() as server:
        r = aioredis.Redis.from_url(server.url)
        try:
            async with in_process_worker(server.url, read_block_ms=5000) as (_worker, task):
                async with BrokerClient(server.url) as client:
                    assert await client.call("lab", "echo", {"n": 1}, timeout=10) == {"n": 1}
                    await eventually(lambda: _blocked_reader(r), what="the worker blocked")
                    if how == "del":
                        await r.delete(KEYS.requests)
                    elif how == "flushall":
                        await r.flushall()
                    else:
                        await _unblock_reader(r)
                    # The worker recreates its group and goes on serving.
                    answer = await client.call("lab", "echo", {"n": 2}, timeout=20)
                    alive = not task.done()
        finally:
            await r.aclose()
    report(f"stream_reset[{how}]", worker_alive=alive, served_after=answer == {"n": 2})
    assert alive
    assert answer == {"n": 2}


async def test_worker_survives_demotion_to_replica_and_back():
    """REPLICAOF makes the worker's Redis a read-only replica (its data replaced by the
    primary's): reads end with UNBLOCKED / READONLY, heartbeats fail. Promoted back, the
    worker recreates its group and serves; it never exits."""
    with own_redis() as server, own_redis() as primary:
        r = aioredis.Redis.from_url(server.url)
        try:
            async with in_process_worker(
                server.url, read_block_ms=5000, heartbeat_interval=0.2
            ) as (worker, task):
                async with BrokerClient(server.url) as client:
                    assert await client.call("lab", "echo", {"n": 1}, timeout=10) == {"n": 1}
                    await eventually(lambda: _blocked_reader(r), what="the worker blocked")
                    await r.execute_command("REPLICAOF", "127.0.0.1", str(primary.port))
                    await eventually(
                        lambda: worker._retry_beat.failing and worker._retry_read.failing,
                        what="heartbeat and reads refused by the replica",
                    )
                    down_lines = worker._retry_beat.log.lines + worker._retry_read.log.lines
                    await r.execute_command("REPLICAOF", "NO", "ONE")
                    answer = await client.call("lab", "echo", {"n": 2}, timeout=20)
                    await eventually(
                        lambda: registry.live_count(r, KEYS), what="a live heartbeat again"
                    )
                    alive = not task.done()
        finally:
            await r.aclose()
    report("replicaof_and_back", worker_alive=alive, log_lines_while_down=down_lines)
    assert alive
    assert answer == {"n": 2}


# -- item 4: Redis refusing writes (OOM) for a while ------------------------------------------


async def test_oom_is_an_overload_and_every_loop_survives_it():
    with own_redis() as server:
        r = aioredis.Redis.from_url(server.url)
        edge = None
        try:
            async with in_process_worker(server.url, heartbeat_interval=0.2) as (worker, task):
                edge = await EdgeServer(
                    EdgeConfig(redis_url=server.url, port=0, default_service="lab")
                ).start()
                async with BrokerClient(server.url) as client, aiohttp.ClientSession() as http:
                    assert await client.call("lab", "echo", {"n": 1}, timeout=10) == {"n": 1}
                    await r.config_set("maxmemory-policy", "noeviction")
                    await r.config_set("maxmemory", "1")
                    with pytest.raises(OverloadedError) as err:
                        await client.call("lab", "echo", {"n": 2}, timeout=5)
                    async with http.get(f"{edge.url}/health") as resp:
                        health_status, health = resp.status, await resp.json()
                    # Heartbeats fail until the worker is no longer counted live.
                    await eventually(
                        lambda: worker._retry_beat.log.failures >= 3, what="failing heartbeats"
                    )
                    await eventually(
                        lambda: _live_is(r, 0), what="the worker's heartbeat to expire"
                    )
                    async with http.post(
                        f"{edge.url}/lab", json={"jsonrpc": "2.0", "id": 1, "method": "echo"}
                    ) as resp:
                        during = (await resp.json())["error"]["code"]
                    await r.config_set("maxmemory", "0")
                    await eventually(lambda: _live_is(r, 1), what="heartbeats to resume")
                    answer = await client.call("lab", "echo", {"n": 3}, timeout=10)
                    alive = not task.done()
        finally:
            if edge is not None:
                await edge.stop()
            await r.aclose()
    report(
        "redis_oom",
        caller_code=err.value.code,
        edge_code_during=during,
        health_status=health_status,
        heartbeat_failures_logged=worker._retry_beat.log.lines,
        worker_alive=alive,
    )
    assert err.value.code == -32002 and err.value.retryable
    assert during in (-32002, -32003)
    assert health_status == 503 and health["redis"] == "out of memory"
    assert alive and answer == {"n": 3}


async def _live_is(r: aioredis.Redis, n: int) -> bool:
    live = await registry.live_count(r, KEYS)
    return live >= 1 if n else live == 0


# -- item 5: clock skew between caller and worker ---------------------------------------------


async def test_budget_survives_a_worker_clock_five_seconds_ahead(monkeypatch):
    monkeypatch.setenv("LAB_CLOCK_SKEW", "5")
    with own_redis() as server:
        worker = WorkerProcess("support.skewed:LabRpcNode", server.url, service="lab")
        try:
            await asyncio.to_thread(worker.wait_ready, 1, 30.0)
            async with BrokerClient(server.url) as client:
                started = time.monotonic()
                answers = [
                    await client.call("lab", "echo", {"i": i}, timeout=3.0) for i in range(20)
                ]
                elapsed = time.monotonic() - started
                # The worker still enforces the budget, counted on one clock.
                with pytest.raises(RpcTimeoutError) as err:
                    await client.call("lab", "sleep", {"seconds": 10}, timeout=4.0)
        finally:
            worker.stop()
    report("clock_skew_worker_ahead", skew_s=5.0, timeout_s=3.0, ok=len(answers), s=elapsed)
    assert answers == [{"i": i} for i in range(20)]
    assert err.value.code == -32001


async def test_the_workers_timeout_error_reaches_the_caller_unchanged():
    with own_redis() as server:
        async with in_process_worker(server.url):
            async with BrokerClient(server.url) as client:
                with pytest.raises(RpcTimeoutError) as err:
                    await client.call("lab", "upstream_timeout", timeout=10)
    assert err.value.message == "the upstream service timed out"
    assert err.value.data == {"upstream": "x"}


# -- item 8: a worker started while Redis is down stops when asked ----------------------------


class LoggedProcess:
    """A process whose stderr lines are collected by a thread."""

    def __init__(self, cmd: list[str], extra_env: dict[str, str]):
        self.lines: list[str] = []
        # A session of its own: a supervisor's children are killed with it at the end.
        self.proc = subprocess.Popen(
            cmd,
            env={**env(), **extra_env},
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
@pytest.mark.parametrize("processes", [1, 2])
async def test_worker_waiting_for_redis_stops_on_signal(sig, processes):
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    cmd = [sys.executable, "-m", "spark.cli.worker", "support.services:LabRpcNode"]
    cmd += ["--redis", url, "--service", "lab", "--processes", str(processes)]
    p = LoggedProcess(cmd, {"SPARK_LOG_LEVEL": "WARNING"})
    try:
        await eventually(
            lambda: sum("Error 111" in line for line in p.lines) >= processes,
            timeout=30,
            what="the outage logged",
        )
        t0 = time.monotonic()
        os.kill(p.proc.pid, sig)
        code = await asyncio.to_thread(p.proc.wait, 20)
        stop_s = time.monotonic() - t0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.proc.pid, signal.SIGKILL)
        p.proc.wait(10)
    report(
        f"stop_while_redis_down[{signal.Signals(sig).name},processes={processes}]",
        rc=code,
        stop_s=stop_s,
    )
    assert code == 0


async def test_worker_started_before_redis_serves_once_it_appears():
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    worker = WorkerProcess("support.services:LabRpcNode", url, service="lab")
    try:
        with own_redis(port=port) as server:
            await asyncio.to_thread(worker.wait_ready, 1, 30.0)
            async with BrokerClient(server.url) as client:
                assert await client.call("lab", "echo", {"late": 1}, timeout=10) == {"late": 1}
    finally:
        worker.stop()
