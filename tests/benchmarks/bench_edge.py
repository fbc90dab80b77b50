"""The same workload through the edge (HTTP, one WebSocket) and directly through Redis.

    python tests/benchmarks/bench_edge.py [--calls 5000] [--inflight 200] [--sequential 500]

Starts its own redis-server on a free port, one `spark-worker` process (LabRpcNode, method
`echo`) and one `spark-edge` process, then measures, for each way in:

- throughput: `--calls` calls with `--inflight` in flight at once (calls/s);
- latency: `--sequential` calls one after another (p50 / p99 in ms).

"direct" is `BrokerClient.call` (what `transport="redis"` uses); "http" is `HttpTransport`
(one aiohttp session, keep-alive connections); "websocket" is `WebSocketTransport` (all
calls on one connection). The client runs in this process, so on a small machine client,
edge, worker and Redis share the cores: read the ratios, not the absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for support.*

from spark.client.broker_client import BrokerClient
from spark.client.http import HttpTransport
from spark.client.websocket import WebSocketTransport
from support.processes import WorkerProcess
from support.processes import env as child_env
from support.redis_server import RedisServer, free_port, wait_until

SERVICE = "lab"
PARAMS = {"order": 42, "items": ["a", "b", "c"], "note": "x" * 64}


def start_edge(url: str, port: int) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "spark.cli.edge",
        "--redis",
        url,
        "--port",
        str(port),
        "--default-service",
        SERVICE,
        "--ws-max-inflight",
        "10000",
    ]
    proc = subprocess.Popen(cmd, env=child_env())

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"spark-edge exited with {proc.returncode}")
        import socket

        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            return False

    wait_until(up, timeout=20, what="spark-edge listening")
    return proc


async def throughput(call, calls: int, inflight: int) -> float:
    todo = iter(range(calls))

    async def lane() -> None:
        for _ in todo:
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(inflight)))
    return calls / (time.perf_counter() - started)


async def latency(call, n: int) -> tuple[float, float]:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - started)
    samples.sort()
    q = statistics.quantiles(samples, n=100)
    return q[49] * 1000, q[98] * 1000


async def measure(name: str, call, args) -> dict:
    for _ in range(200):  # warm up: connections, caches
        await call()
    rate = await throughput(call, args.calls, args.inflight)
    p50, p99 = await latency(call, args.sequential)
    row = {"name": name, "calls_per_s": rate, "p50_ms": p50, "p99_ms": p99}
    print(f"{name:<10} {rate:>10.0f} calls/s   p50 {p50:6.2f} ms   p99 {p99:6.2f} ms", flush=True)
    return row


async def run(url: str, edge_url: str, args) -> list[dict]:
    rows = []
    deadline = lambda: time.time() + 30  # noqa: E731

    async with BrokerClient(url) as client:

        async def direct():
            await client.call(SERVICE, "echo", PARAMS, timeout=30)

        rows.append(await measure("direct", direct, args))

    async with HttpTransport(edge_url) as http:

        async def over_http():
            await http.call("echo", PARAMS, deadline=deadline())

        rows.append(await measure("http", over_http, args))

    async with WebSocketTransport(edge_url) as ws:

        async def over_ws():
            await ws.call("echo", PARAMS, deadline=deadline())

        rows.append(await measure("websocket", over_ws, args))
        assert ws.connections == 1
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=5000)
    p.add_argument("--inflight", type=int, default=200)
    p.add_argument("--sequential", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=256, help="worker handlers")
    args = p.parse_args(argv)

    os.environ.setdefault("SPARK_LOG_LEVEL", "WARNING")
    redis = RedisServer().start()
    worker = edge = None
    try:
        worker = WorkerProcess(
            "support.services:LabRpcNode",
            redis.url,
            "--concurrency",
            str(args.concurrency),
            service=SERVICE,
        ).wait_ready()
        port = free_port()
        edge = start_edge(redis.url, port)
        print(
            f"edge benchmark: {args.calls} calls with {args.inflight} in flight, "
            f"{args.sequential} sequential; 1 worker (concurrency {args.concurrency}), "
            f"{os.cpu_count()} cores",
            flush=True,
        )
        rows = asyncio.run(run(redis.url, f"http://127.0.0.1:{port}", args))
    finally:
        if edge is not None:
            edge.terminate()
            edge.wait(timeout=15)
        if worker is not None:
            worker.terminate()
        redis.cleanup()
    base = rows[0]
    for row in rows[1:]:
        print(
            f"{row['name']:<10} {row['calls_per_s'] / base['calls_per_s']:.2f}x direct throughput, "
            f"p50 +{row['p50_ms'] - base['p50_ms']:.2f} ms over direct"
        )
    return rows


if __name__ == "__main__":
    main()
