"""GraphState on Redis: transactions/s and get/set/increment ops/s, next to the raw
redis-py HSET / HGET / HINCRBY rates measured in the same run (the floor).

    python tests/benchmarks/bench_state.py [--redis URL] [--seconds 0.8] [--concurrency 16]

Without --redis it starts its own redis-server on a free port. Each figure runs for
`--seconds`, once with one task (latency-bound: one command in flight) and once with
`--concurrency` tasks. Transactions are measured on one namespace (they serialize on its
lock, so concurrency only adds contention) and on one namespace per task.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for support.*

from spark.broker.connection import connect, describe
from spark.broker.keys import state_key
from spark.state import GraphState, RedisBackend


async def rate(op: Callable[[int], Awaitable[object]], seconds: float, tasks: int) -> float:
    """Operations per second of `op(task_index)` run back to back by `tasks` tasks."""
    done = 0
    stop = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await op(i)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(tasks)))
    return done / (time.perf_counter() - started)


async def run(url: str, seconds: float, concurrency: int) -> list[dict]:
    prefix = f"bench-{os.getpid()}"
    raw = connect(url)
    backend = RedisBackend(url, namespace=prefix)
    state = GraphState(backend=backend)
    per_task = [
        GraphState(backend=RedisBackend(url, namespace=f"{prefix}-{i}")) for i in range(concurrency)
    ]
    key = state_key(prefix)
    await state.set("counter", 0)
    await raw.hset(key, "raw", 0)

    async def transaction(s: GraphState) -> None:
        async with s.transaction() as tx:
            tx["counter"] = tx["counter"] + 1 if "counter" in tx else 1

    rows: list[dict] = []

    async def measure(name: str, floor_name: str, floor, ours, tasks_list=(1, concurrency)):
        for tasks in tasks_list:
            floor_rate = await rate(floor, seconds, tasks)
            our_rate = await rate(ours, seconds, tasks)
            rows.append(
                {
                    "op": name,
                    "floor": floor_name,
                    "tasks": tasks,
                    "raw": floor_rate,
                    "graph_state": our_rate,
                }
            )

    value = {"status": "ok", "items": [1, 2, 3]}
    encoded = b'{"status":"ok","items":[1,2,3]}'
    try:
        await measure(
            "set",
            "HSET",
            lambda i: raw.hset(key, f"r{i}", encoded),
            lambda i: state.set(f"k{i}", value),
        )
        await measure("get", "HGET", lambda i: raw.hget(key, f"r{i}"), lambda i: state.get(f"k{i}"))
        await measure(
            "increment",
            "HINCRBY",
            lambda i: raw.hincrby(key, "raw", 1),
            lambda i: state.increment("n"),
        )
        await measure(
            "transaction (1 namespace)",
            "HINCRBY",
            lambda i: raw.hincrby(key, "raw", 1),
            lambda i: transaction(state),
        )
        await measure(
            "transaction (ns per task)",
            "HINCRBY",
            lambda i: raw.hincrby(key, "raw", 1),
            lambda i: transaction(per_task[i]),
            tasks_list=(concurrency,),
        )
    finally:
        await raw.delete(key, *(state_key(f"{prefix}-{i}") for i in range(concurrency)))
        await raw.aclose()
        await backend.aclose()
        for s in per_task:
            await s.backend.aclose()
    return rows


def report(rows: list[dict], url: str, seconds: float) -> str:
    lines = [
        f"GraphState(RedisBackend) on {describe(url)}, {seconds:g} s per figure",
        f"{'operation':<28}{'tasks':>6}{'raw op':>10}{'raw/s':>11}{'GraphState/s':>14}{'ratio':>7}",
    ]
    for r in rows:
        lines.append(
            f"{r['op']:<28}{r['tasks']:>6}{r['floor']:>10}{r['raw']:>11,.0f}"
            f"{r['graph_state']:>14,.0f}{r['graph_state'] / r['raw']:>7.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", help="Redis URL (default: start a redis-server)")
    parser.add_argument("--seconds", type=float, default=0.8, help="duration of each figure")
    parser.add_argument("--concurrency", type=int, default=16, help="tasks for the busy rows")
    args = parser.parse_args(argv)
    server = None
    url = args.redis
    if url is None:
        from support.redis_server import RedisServer

        server = RedisServer().start()
        url = server.url
    try:
        rows = asyncio.run(run(url, args.seconds, args.concurrency))
    finally:
        if server is not None:
            server.cleanup()
    print(report(rows, url, args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
