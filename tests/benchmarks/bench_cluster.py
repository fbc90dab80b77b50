"""Services spread over a 3-shard Redis Cluster next to the same services on one Redis,
measured in the same run: calls/s with 200 in flight, and what each call costs Redis.

Per call, from INFO commandstats on every primary: the Redis commands it takes and the
microseconds of Redis CPU they use (`usec`). One Redis serves about 1e6 / (usec per call)
calls/s per core before it saturates; that is the figure README's capacity section uses.

On a 2-core machine the client, the workers and six redis-servers share the cores, so the
cluster row shows the cost of spreading (routing, more connections) rather than its gain;
the gain needs a core (or a machine) per shard.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis

from spark.client.broker_client import BrokerClient
from support.processes import WorkerProcess
from support.redis_cluster import RedisClusterGroup
from support.redis_server import RedisServer

LAB = "support.services:LabRpcNode"


def commandstats(ports: list[int]) -> tuple[int, int]:
    """(commands, usec) summed over the given servers."""
    calls = usec = 0
    for port in ports:
        client = redis.Redis(port=port)
        try:
            for name, stats in client.info("commandstats").items():
                if name.startswith("cmdstat_") and name not in ("cmdstat_info",):
                    calls += int(stats["calls"])
                    usec += int(stats["usec"])
        finally:
            client.close()
    return calls, usec


def reset(ports: list[int]) -> None:
    for port in ports:
        client = redis.Redis(port=port)
        try:
            client.config_resetstat()
        finally:
            client.close()


async def drive(url: str, services: list[str], calls: int, inflight: int) -> float:
    async with BrokerClient(url) as client:
        for s in services:  # warm: connections, scripts, slot map
            await client.call(s, "echo", {}, timeout=30)
        gate = asyncio.Semaphore(inflight)

        async def one(i: int) -> None:
            async with gate:
                await client.call(services[i % len(services)], "echo", {"i": i}, timeout=120)

        started = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(calls)))
        return calls / (time.perf_counter() - started)


def measure(url: str, ports: list[int], services: list[str], args) -> dict:
    reset(ports)
    rate = asyncio.run(drive(url, services, args.calls, args.inflight))
    commands, usec = commandstats(ports)
    return {"rate": rate, "commands": commands / args.calls, "usec": usec / args.calls}


def report(label: str, rows: list[dict]) -> dict:
    """The best round (the one least disturbed by whatever else shares the cores)."""
    best = max(rows, key=lambda r: r["rate"])
    rounds = ", ".join(f"{r['rate']:.0f}" for r in rows)
    print(
        f"{label:<28} {best['rate']:>8.0f} calls/s   {best['commands']:5.1f} redis commands/call"
        f"   {best['usec']:6.1f} us redis CPU/call (all shards)   "
        f"rounds: {rounds}",
        flush=True,
    )
    return best


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--calls", type=int, default=6000)
    p.add_argument("--inflight", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per topology")
    args = p.parse_args(argv)

    single = RedisServer().start()
    cluster = RedisClusterGroup()
    try:
        cluster.start()
        owners: dict[int, str] = {}
        for i in range(1000):
            owners.setdefault(cluster.owner_of(f"{{bench{i}}}").port, f"bench{i}")
            if len(owners) == 3:
                break
        services = list(owners.values())
        print(f"{len(services)} services ({', '.join(services)}), echo, {args.inflight} in flight")
        primaries = [s.port for s in cluster.primaries()]
        setups = [
            ("one redis", single.url, [single.port]),
            ("cluster, 3 shards + replicas", cluster.url, primaries),
        ]
        workers = [
            WorkerProcess(LAB, url, "--concurrency", "64", service=s)
            for _label, url, _ports in setups
            for s in services
        ]
        try:
            for w in workers:
                w.wait_ready(timeout=30)
            for _label, url, _ports in setups:  # warm-up round
                asyncio.run(drive(url, services, 200, args.inflight))
            rows: dict[str, list[dict]] = {label: [] for label, _, _ in setups}
            for _ in range(args.rounds):  # alternate, so both meet the same background load
                for label, url, ports in setups:
                    rows[label].append(measure(url, ports, services, args))
        finally:
            for w in workers:
                w.stop()
        one = report("one redis", rows["one redis"])
        three = report(setups[1][0], rows[setups[1][0]])
        print(
            f"cluster/one: throughput {three['rate'] / one['rate']:.2f}x; "
            f"per shard ~{three['usec'] / len(primaries):.1f} us redis CPU per call; "
            f"one redis saturates near {1e6 / one['usec']:.0f} calls/s per core"
        )
    finally:
        cluster.cleanup()
        single.cleanup()


if __name__ == "__main__":
    main(sys.argv[1:])
