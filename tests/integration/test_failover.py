"""Scale-out topologies under failure: worker pools, a spark-edge and a proxy on a Redis Cluster
(three services, one per shard) and on Sentinel keep serving when the primary that holds a
service's keys is SIGKILLed with 200 calls in flight.

Every call is answered (its result, or a JSON-RPC error by its deadline: a request written
to the dead primary and not yet replicated is lost with it, and the caller is told), and
the services answer again through every entry point once a replica is promoted.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest
from redis.crc import key_slot

from spark.client.broker_client import BrokerClient
from spark.errors import RpcError
from spark.nodes.rpc_client import RemoteRpcProxyConfig, RemoteRpcProxyNode
from spark.nodes.types import ExecutionContext, NodeMessage
from support.lab import EdgeProcess
from support.polling import eventually
from support.processes import WorkerProcess

pytestmark = pytest.mark.integration

LAB = "support.services:LabRpcNode"
CALLS = 200


def one_service_per_shard(group) -> list[str]:
    """Service names whose `{svc}` slots fall on three different primaries."""
    owners: dict[int, str] = {}
    for i in range(1000):
        name = f"svc{i}"
        port = group.owner_of(f"{{{name}}}").port
        owners.setdefault(port, name)
        if len(owners) == 3:
            break
    assert len(owners) == 3, owners
    assert len({key_slot(f"{{{n}}}".encode()) for n in owners.values()}) == 3
    return list(owners.values())


def topology(request, redis_url):
    """The running group behind `redis_url` and the services to spread over it."""
    if redis_url.startswith("redis+cluster"):
        group = request.getfixturevalue("redis_cluster")
        return group, one_service_per_shard(group)
    group = request.getfixturevalue("redis_sentinel")
    return group, ["alpha", "beta", "gamma"]


async def answered_by_every_entry_point(services, client, edge: str, http, url) -> None:
    async with http.get(f"{edge}/health") as resp:
        health = await resp.json()
        assert resp.status == 200, health
    assert all(health["services"].get(s, 0) >= 1 for s in services), health
    for service in services:
        assert await client.call(service, "echo", {"via": "client"}, timeout=10) == {
            "via": "client"
        }
        body = orjson.dumps({"jsonrpc": "2.0", "method": "echo", "params": {"v": 1}, "id": 1})
        async with http.post(f"{edge}/{service}", data=body) as resp:
            assert (await resp.json())["result"] == {"v": 1}
        config = RemoteRpcProxyConfig(endpoint=url, transport="redis", service=service)
        async with RemoteRpcProxyNode(config) as proxy:
            ctx = ExecutionContext(inputs=NodeMessage(content={"method": "echo", "x": 2}))
            assert (await proxy.process(ctx))["x"] == 2


async def responsive(services, client) -> bool:
    for service in services:
        try:
            await client.call(service, "echo", {}, timeout=2)
        except RpcError:
            return False
    return True


@pytest.mark.topologies("cluster", "sentinel")
async def test_primary_sigkill_with_200_calls_in_flight(request, redis_url, monkeypatch):
    monkeypatch.setenv("SPARK_LOG_LEVEL", "ERROR")  # the workers' retry lines are expected
    group, services = topology(request, redis_url)
    doomed_service = services[0]
    workers = [
        WorkerProcess(LAB, redis_url, "--concurrency", "32", "--reclaim-after", "2", service=s)
        for s in services
    ]
    try:
        for w in workers:
            w.wait_ready(timeout=30)
        async with (
            BrokerClient(redis_url) as client,
            aiohttp.ClientSession() as http,
        ):
            # A spark-edge process, started with the same URL.
            edge = EdgeProcess(redis_url, service=services[0]).start()
            try:
                await answered_by_every_entry_point(services, client, edge.http, http, redis_url)

                started = time.monotonic()
                calls = [
                    asyncio.create_task(
                        client.call(doomed_service, "sleep", {"seconds": 0.2}, timeout=40)
                    )
                    for _ in range(CALLS)
                ]
                # Under way: some answered, most still queued or running.
                await eventually(
                    lambda: sum(c.done() for c in calls) >= 10, timeout=20, what="calls under way"
                )
                if redis_url.startswith("redis+cluster"):
                    killed = group.kill_owner_of(f"{{{doomed_service}}}")
                    await asyncio.to_thread(group.wait_failover, killed, f"{{{doomed_service}}}")
                else:
                    killed = group.kill_primary()
                    await asyncio.to_thread(group.wait_failover, killed)
                promoted_after = time.monotonic() - started

                outcomes = await asyncio.gather(*calls, return_exceptions=True)
                results = [o for o in outcomes if isinstance(o, dict)]
                errors = [o for o in outcomes if isinstance(o, RpcError)]
                others = [o for o in outcomes if not isinstance(o, dict | RpcError)]
                print(
                    f"FAILOVER {redis_url.split(':')[0]}: {len(results)} results, "
                    f"{len(errors)} JSON-RPC errors of {CALLS}; replica promoted "
                    f"{promoted_after:.1f}s after the calls began; all answered "
                    f"{time.monotonic() - started:.1f}s after"
                )
                assert not others, others[:3]
                assert len(results) + len(errors) == CALLS
                assert all(r["slept"] == 0.2 for r in results)

                # Once promoted, every service answers through the client, the edge and a
                # proxy, all of them still on the connections they started with.
                await eventually(
                    lambda: responsive(services, client), timeout=30, what="services answer"
                )
                await answered_by_every_entry_point(services, client, edge.http, http, redis_url)
                assert edge.alive, "the edge died with the primary"
            finally:
                edge.stop()
        for w in workers:
            assert w.proc.poll() is None, "a worker died with the primary"
    finally:
        for w in workers:
            w.stop()


@pytest.mark.topologies("cluster")
async def test_service_slot_migrates_with_calls_in_flight(request, redis_url, monkeypatch):
    """Resharding under load: the slot of a service moves to another primary, one key at a
    time, while 200 calls run; clients and workers follow ASK and MOVED, and a worker blocked
    on the stream that moved away (UNBLOCKED) reads again where it went."""
    monkeypatch.setenv("SPARK_LOG_LEVEL", "ERROR")
    group, services = topology(request, redis_url)
    service = services[0]
    tag = f"{{{service}}}"
    worker = WorkerProcess(LAB, redis_url, "--concurrency", "32", service=service)
    try:
        worker.wait_ready(timeout=30)
        async with BrokerClient(redis_url) as client:
            assert await client.call(service, "echo", {"x": 1}, timeout=10) == {"x": 1}
            source = group.owner_of(tag)
            target = next(p for p in group.primaries() if p is not source)
            calls = [
                asyncio.create_task(client.call(service, "echo", {"i": i}, timeout=40))
                for i in range(CALLS)
            ]
            # The pause between keys keeps the slot mid-migration while calls run: it is the load.
            await asyncio.to_thread(group.migrate_slot, tag, target, 1, lambda: time.sleep(0.05))
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            assert group.owner_of(tag) is target
            results = [o for o in outcomes if isinstance(o, dict)]
            print(f"MIGRATION: {len(results)} of {CALLS} calls answered with their result")
            assert all(isinstance(o, dict | RpcError) for o in outcomes), outcomes
            assert sorted(r["i"] for r in results) == sorted(
                i for i, o in enumerate(outcomes) if isinstance(o, dict)
            )
            await eventually(lambda: responsive([service], client), timeout=30, what="answers")
        assert worker.proc.poll() is None
    finally:
        worker.stop()
