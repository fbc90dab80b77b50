"""Item 4: poison and slow requests.

A request whose handler kills its worker process every time ends in the dead-letter stream
after --max-deliveries (its caller gets -32004) while echo calls keep flowing; a handler
that hangs is bounded by the caller's deadline, and its slot is freed.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from spark.broker.keys import ServiceKeys
from spark.client.broker_client import BrokerClient
from spark.errors import DeadLetteredError, RpcTimeoutError
from support.lab import TARGET, apoll, report, stream_stats
from support.processes import WorkerProcess

pytestmark = pytest.mark.timeout(120)


async def test_poison_request_is_dead_lettered_while_echo_keeps_flowing(redis_url):
    pool = WorkerProcess(
        TARGET,
        redis_url,
        "--processes",
        "2",
        "--reclaim-after",
        "0.5",
        "--max-deliveries",
        "2",
        service="lab",
    )
    client = BrokerClient(redis_url)
    r = aioredis.Redis.from_url(redis_url)
    stop = asyncio.Event()
    echoes = {"ok": 0, "failed": 0}
    latencies: list[float] = []
    try:
        await asyncio.to_thread(pool.wait_ready, 2, 30.0)

        async def echo_lane(n: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                began = time.monotonic()
                try:
                    got = await client.call("lab", "echo", {"lane": n, "i": i}, timeout=15)
                    assert got == {"lane": n, "i": i}
                    echoes["ok"] += 1
                    latencies.append(time.monotonic() - began)
                except Exception:
                    echoes["failed"] += 1

        lanes = [asyncio.create_task(echo_lane(n)) for n in range(8)]
        await apoll(lambda: echoes["ok"] >= 100, timeout=20, what="echo flowing")
        before = echoes["ok"]
        began = time.monotonic()
        with pytest.raises(DeadLetteredError) as info:
            await client.call("lab", "crash", {"count": "poison"}, timeout=30)
        episode = time.monotonic() - began
        during = echoes["ok"] - before
        # Echo keeps flowing after the episode too.
        after_mark = echoes["ok"]
        await apoll(lambda: echoes["ok"] >= after_mark + 100, timeout=20, what="echo after")
        stop.set()
        await asyncio.gather(*lanes)
        runs = int(await r.get("lab:runs:poison") or 0)
        stats = await stream_stats(redis_url)
        dead = await r.xrange(ServiceKeys.for_service("lab").dead)
        latencies.sort()
        report(
            "poison",
            poison_runs=runs,
            dead_letters=stats["dead"],
            episode_s=episode,
            echo_during=during,
            echo_rps_during=during / episode,
            echo_failed=echoes["failed"],
            echo_p50_ms=1000 * latencies[len(latencies) // 2],
            echo_max_ms=1000 * latencies[-1],
            error=info.value.code,
        )
        assert runs == 2  # --max-deliveries 2: two runs, then dead-lettered unrun
        assert stats["dead"] == 1 and len(dead) == 1
        assert b"poison" in dead[0][1][b"e"]
        assert echoes["failed"] == 0
        assert during > 0
        await apoll(lambda: _drained(redis_url), timeout=20, what="stream drained")
    finally:
        stop.set()
        await client.aclose()
        await r.aclose()
        pool.terminate(timeout=30)


async def _drained(url: str) -> bool:
    s = await stream_stats(url)
    return s["backlog"] == 0 and s["pending"] == 0


async def test_hung_handler_is_bounded_by_the_callers_deadline(redis_url):
    worker = WorkerProcess(TARGET, redis_url, "--concurrency", "1", service="lab")
    client = BrokerClient(redis_url)
    try:
        await asyncio.to_thread(worker.wait_ready)
        began = time.monotonic()
        with pytest.raises(RpcTimeoutError):
            await client.call("lab", "sleep", {"seconds": 30}, timeout=2.0)
        waited = time.monotonic() - began
        # The only slot (--concurrency 1) is free again: the handler was stopped, not left.
        began2 = time.monotonic()
        assert await client.call("lab", "echo", {"after": 1}, timeout=10) == {"after": 1}
        next_call = time.monotonic() - began2
        report("hung_handler", deadline_s=2.0, timed_out_after_s=waited, next_call_s=next_call)
        assert 1.9 <= waited <= 4.0
        assert next_call < 5.0
    finally:
        await client.aclose()
        worker.stop()
