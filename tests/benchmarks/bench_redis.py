"""Calls through RemoteRpcProxyNode(transport="redis") to one spark-worker process, next to
a minimal raw redis-py round trip (XADD -> XREADGROUP -> LPUSH reply -> one BLPOP reader)
measured in the same run against the same redis-server.

Prints calls/s with 200 in flight, p50/p99 of sequential calls, and the ratios
(targets on 2 cores: throughput >= 0.7x raw, p50 <= 1.5x raw).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis.asyncio as aioredis

from spark.aio import cancel_and_wait
from support.processes import WorkerProcess
from support.redis_server import RedisServer

RAW_STREAM = "raw:requests"
RAW_GROUP = "g"


# -- the raw floor ------------------------------------------------------------------------


def _raw_worker(url: str) -> None:
    """Run in its own process: XREADGROUP a batch, LPUSH each reply, XACK, until killed."""

    async def main() -> None:
        r = aioredis.Redis.from_url(url)
        await r.delete(RAW_STREAM)
        await r.xgroup_create(RAW_STREAM, RAW_GROUP, id="0", mkstream=True)
        await r.set("raw:ready", 1)
        while True:
            got = await r.xreadgroup(RAW_GROUP, "w", {RAW_STREAM: ">"}, count=200, block=200)
            if not got:
                continue
            pipe = r.pipeline(transaction=False)
            ids = []
            for mid, fields in got[0][1]:
                pipe.lpush(fields[b"r"], fields[b"i"])
                ids.append(mid)
            pipe.xack(RAW_STREAM, RAW_GROUP, *ids)
            await pipe.execute()

    asyncio.run(main())


class RawClient:
    def __init__(self, url: str):
        pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=64)
        self.redis = aioredis.Redis(connection_pool=pool)
        self.blocking = aioredis.Redis.from_url(url)
        self.key = f"raw:reply:{uuid.uuid4().hex}"
        self.pending: dict[bytes, asyncio.Future] = {}
        self.seq = 0
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            got = await self.blocking.blpop([self.key], timeout=1)
            if got:
                fut = self.pending.pop(got[1], None)
                if fut:
                    fut.set_result(got[1])

    async def call(self) -> None:
        self.seq += 1
        rid = str(self.seq).encode()
        fut = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        await self.redis.xadd(RAW_STREAM, {"i": rid, "r": self.key})
        await fut

    async def aclose(self) -> None:
        await cancel_and_wait(self.reader)
        await self.redis.aclose()
        await self.blocking.aclose()


# -- measuring ----------------------------------------------------------------------------


async def throughput(call, n: int, in_flight: int) -> float:
    sem = asyncio.Semaphore(in_flight)

    async def one(i: int) -> None:
        async with sem:
            await call(i)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.perf_counter() - start)


async def latencies(call, n: int) -> list[float]:
    times = []
    for i in range(n):
        start = time.perf_counter()
        await call(i)
        times.append((time.perf_counter() - start) * 1000)
    return times


def summary(rate: float, times: list[float]) -> dict:
    times = sorted(times)
    return {"rate": rate, "p50": statistics.median(times), "p99": times[int(len(times) * 0.99) - 1]}


@contextlib.asynccontextmanager
async def raw_setup(url: str):
    probe = aioredis.Redis.from_url(url)
    await probe.delete("raw:ready")
    proc = await asyncio.create_subprocess_exec(sys.executable, __file__, "--raw-worker", url)
    while not await probe.get("raw:ready"):
        if proc.returncode is not None:
            raise RuntimeError("raw worker died")
        await asyncio.sleep(0.02)
    await probe.aclose()
    client = RawClient(url)

    async def call(_i: int) -> None:
        await client.call()

    try:
        yield call
    finally:
        await client.aclose()
        proc.kill()
        await proc.wait()


@contextlib.asynccontextmanager
async def spark_setup(url: str, concurrency: int):
    from spark.nodes.rpc_client import RemoteRpcProxyConfig, RemoteRpcProxyNode
    from spark.nodes.types import ExecutionContext, NodeMessage

    worker = WorkerProcess(
        "support.services:LabRpcNode", url, "--concurrency", str(concurrency), service="bench"
    ).wait_ready()
    proxy = RemoteRpcProxyNode(
        RemoteRpcProxyConfig(endpoint=url, transport="redis", service="bench")
    )

    async def call(i: int) -> None:
        ctx = ExecutionContext(inputs=NodeMessage(content={"method": "echo", "i": i}))
        result = await proxy.process(ctx)
        assert result == {"i": i}

    try:
        yield call
    finally:
        await proxy.aclose()
        worker.terminate()


async def measure(url: str, n: int, seq: int, in_flight: int, concurrency: int):
    """Both set up at once; sequential calls interleaved in rounds, so that the machine's
    background noise falls on both alike."""
    async with raw_setup(url) as raw, spark_setup(url, concurrency) as spark:
        rates = {}
        for name, call in (("raw", raw), ("spark", spark)):
            await throughput(call, 500, in_flight)  # warm-up
            rates[name] = await throughput(call, n, in_flight)
        times: dict[str, list[float]] = {"raw": [], "spark": []}
        rounds = 5
        for _ in range(rounds):
            times["raw"] += await latencies(raw, seq // rounds)
            times["spark"] += await latencies(spark, seq // rounds)
    return summary(rates["raw"], times["raw"]), summary(rates["spark"], times["spark"])


def report(raw: dict, spark: dict, n: int, in_flight: int, seq: int) -> None:
    print(f"redis transport: {n} calls, {in_flight} in flight; {seq} sequential calls")
    print(f"  {'':24}{'calls/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for name, m in (("raw redis-py floor", raw), ("spark (proxy+worker)", spark)):
        print(f"  {name:24}{m['rate']:>10.0f}{m['p50']:>10.3f}{m['p99']:>10.3f}")
    thr, lat = spark["rate"] / raw["rate"], spark["p50"] / raw["p50"]
    print(
        f"  throughput ratio {thr:.2f}x raw (target >= 0.70)   "
        f"p50 ratio {lat:.2f}x raw (target <= 1.50)"
    )


async def run(url: str, n: int, seq: int, in_flight: int, concurrency: int) -> None:
    raw, spark = await measure(url, n, seq, in_flight, concurrency)
    report(raw, spark, n, in_flight, seq)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--redis", help="use this Redis instead of starting one")
    p.add_argument("-n", type=int, default=5000)
    p.add_argument("--sequential", type=int, default=500)
    p.add_argument("--in-flight", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=64, help="worker handler slots")
    p.add_argument("--raw-worker", metavar="URL", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.raw_worker:
        _raw_worker(args.raw_worker)
        return 0
    server = None if args.redis else RedisServer().start()
    try:
        asyncio.run(
            run(args.redis or server.url, args.n, args.sequential, args.in_flight, args.concurrency)
        )
    finally:
        if server:
            server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
