"""The example services in real `spark-worker` processes on a real redis-server."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter

import orjson
import pytest
import redis

from spark.client.broker_client import BrokerClient
from spark.errors import RpcError
from support.polling import eventually
from support.processes import WorkerProcess
from workers import catalog
from workers.base import OUT_OF_STOCK

pytestmark = pytest.mark.integration

LAMP, CHAIR = catalog.LIMITED_SKU, "SKU-CH-07"


@pytest.fixture
def workers():
    started: list[WorkerProcess] = []
    yield started
    for w in started:
        w.stop()


def start(workers: list, target: str, url: str, service: str, *args: str) -> WorkerProcess:
    w = WorkerProcess(target, url, *args, service=service)
    workers.append(w)
    return w


# -- inventory: no overselling under concurrency ----------------------------------------------


async def test_concurrent_reservations_from_several_processes_never_oversell(redis_url, workers):
    for _ in range(3):
        start(
            workers,
            "workers.inventory:InventoryRpcNode",
            redis_url,
            "inventory",
            "--concurrency",
            "8",
        )
    for w in workers:
        w.wait_ready(count=3)
    rng = random.Random(1)
    requests = []
    for _ in range(400):
        order_id = f"o{rng.randrange(300)}"  # some order ids repeat: retried reservations
        r = random.Random(order_id)  # a repeat asks for exactly the same items
        items = [{"sku": CHAIR, "quantity": r.randint(2, 8)}]
        if r.random() < 0.3:
            items.append({"sku": LAMP, "quantity": r.randint(1, 2)})
        requests.append((order_id, items))
    plain = redis.Redis.from_url(redis_url)
    stock_key, reservations_key = "shop:{inventory}:stock", "shop:{inventory}:reservations"
    negative: list[dict] = []
    done = asyncio.Event()

    async def watch_stock():
        while not done.is_set():
            stock = await asyncio.to_thread(plain.hgetall, stock_key)
            if any(int(v) < 0 for v in stock.values()):
                negative.append(stock)
            await asyncio.sleep(0.005)  # a sampling interval while the calls run, not a wait

    async with BrokerClient(redis_url) as client:
        watcher = asyncio.create_task(watch_stock())
        outcomes = await asyncio.gather(
            *(
                client.call(
                    "inventory",
                    "reserve_inventory",
                    {"order_id": order_id, "items": items},
                    timeout=30,
                )
                for order_id, items in requests
            ),
            return_exceptions=True,
        )
        done.set()
        await watcher

    assert not negative
    failures = [o for o in outcomes if not isinstance(o, dict)]
    assert all(isinstance(e, RpcError) and e.code == OUT_OF_STOCK for e in failures), failures[:3]
    successes = [o for o in outcomes if isinstance(o, dict)]
    firsts = [o for o in successes if not o["duplicate"]]
    assert len({o["order_id"] for o in firsts}) == len(firsts)  # each order reserved once
    stock = {k.decode(): int(v) for k, v in plain.hgetall(stock_key).items()}
    reserved_docs = [orjson.loads(v) for v in plain.hgetall(reservations_key).values()]
    assert len(reserved_docs) == len(firsts)
    held: Counter[str] = Counter()
    for doc in reserved_docs:
        for line in doc["items"]:
            held[line["sku"]] += line["quantity"]
    for sku in (CHAIR, LAMP):
        initial = catalog.PRODUCTS[sku][2]
        assert stock[sku] >= 0
        assert held[sku] == initial - stock[sku], sku
        assert int(plain.hget("shop:{inventory}:reserved", sku)) == held[sku]
    assert stock[LAMP] < 2 and stock[CHAIR] < 8  # both sold out, as far as anyone asked
    assert failures  # some orders lost the race
    plain.close()
    for w in workers:
        assert w.terminate() == 0


# -- logging: queued entries survive a graceful stop -------------------------------------------


async def test_sigterm_writes_every_queued_log_entry(redis_url, workers, monkeypatch):
    # Nothing is written by size or timer: only the shutdown flush can save these.
    monkeypatch.setenv("WORKERS_LOG_BUFFER_SIZE", "100000")
    monkeypatch.setenv("WORKERS_LOG_FLUSH_INTERVAL", "3600")
    for _ in range(2):
        start(workers, "workers.logging_service:LoggingRpcNode", redis_url, "logging")
    for w in workers:
        w.wait_ready(count=2)
    plain = redis.Redis.from_url(redis_url)
    async with BrokerClient(redis_url) as client:
        answers = await asyncio.gather(
            *(
                client.call("logging", "log", {"message": f"m{i}", "n": i}, timeout=10)
                for i in range(500)
            )
        )
    assert answers == [{"status": "queued"}] * 500
    assert plain.xlen("shop:{logging}:entries") == 0  # all of them are still buffered
    for w in workers:
        w.signal(signal.SIGTERM)
    for w in workers:
        assert w.proc.wait(timeout=30) == 0
    rows = plain.xrange("shop:{logging}:entries")
    assert sorted(orjson.loads(f[b"entry"])["n"] for _, f in rows) == list(range(500))
    plain.close()


# -- analytics: long jobs are neither reclaimed nor blocking --------------------------------------


async def test_a_long_job_is_not_reclaimed_and_does_not_block(redis_url, workers, monkeypatch):
    monkeypatch.setenv("WORKERS_ANALYTICS_DAY_SECONDS", "0.1")
    reclaim = ("--reclaim-after", "0.5", "--concurrency", "4", "--heartbeat", "0.5")
    first = start(workers, "workers.analytics:AnalyticsRpcNode", redis_url, "analytics", *reclaim)
    first.wait_ready()
    days = 40  # ~4 s of work, 8 times the reclaim idle time
    async with BrokerClient(redis_url) as client:
        job = asyncio.create_task(
            client.call(
                "analytics",
                "compute_analytics",
                {"date_range": {"start": "2024-01-01", "end": "2024-02-09"}, "job_id": "long"},
                timeout=60,
            )
        )

        async def running():
            try:
                status = await client.call("analytics", "job_status", {"job_id": "long"}, timeout=5)
            except RpcError:
                return None
            return status if status["done_days"] > 0 else None

        status = await eventually(running, what="the job to start")
        assert status["worker"].endswith(f":{first.pid}")
        # The only worker answers other requests while the job runs.
        for _ in range(5):
            t0 = time.monotonic()
            mid = await client.call("analytics", "job_status", {"job_id": "long"}, timeout=5)
            assert time.monotonic() - t0 < 2.5  # not after the job (30 days of work)
            assert mid["status"] == "running"
        # A second worker that would reclaim any entry idle for 0.5 s.
        second = start(
            workers, "workers.analytics:AnalyticsRpcNode", redis_url, "analytics", *reclaim
        )
        await asyncio.to_thread(second.wait_ready, 2)
        assert not job.done()
        result = await job
        final = await client.call("analytics", "job_status", {"job_id": "long"}, timeout=5)
    assert result["days"] == days and result["cached"] is False
    assert final["status"] == "done" and final["runs"] == 1  # ran once, never reclaimed
    plain = redis.Redis.from_url(redis_url)
    assert plain.xlen("spark:{analytics}:dead") == 0
    plain.close()
    for w in workers:
        assert w.terminate() == 0
