"""The example services (workers/) on the embedded broker: real workers, no sockets."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from spark.client.broker_client import BrokerClient
from spark.errors import InvalidParamsError, OverloadedError, RpcError
from spark.runtime.worker import run_worker
from support.polling import eventually
from workers import catalog
from workers.analytics import AnalyticsRpcNode
from workers.base import CONFLICT, NOT_FOUND, OUT_OF_STOCK
from workers.cache import CacheRpcNode
from workers.customer import CustomerRpcNode
from workers.data_processing import DataProcessingRpcNode
from workers.inventory import InventoryRpcNode
from workers.logging_service import LoggingRpcNode
from workers.ml_inference import MLInferenceRpcNode, load_models
from workers.order import OrderRpcNode


@pytest.fixture
def url(memory_url) -> str:
    return f"{memory_url}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def client(url) -> AsyncIterator[BrokerClient]:
    c = BrokerClient(url)
    try:
        yield c
    finally:
        await c.aclose()


@contextlib.asynccontextmanager
async def serving(url: str, *nodes: Any, **options: Any) -> AsyncIterator[list[Any]]:
    """Run each node in its own worker (several of one class = replicas of one pool)."""
    stop = asyncio.Event()
    tasks = []
    try:
        for node in nodes:
            ready = asyncio.Event()
            tasks.append(
                asyncio.create_task(run_worker(node, url=url, stop=stop, ready=ready, **options))
            )
            await asyncio.wait_for(ready.wait(), 5)
        yield list(nodes)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
        for node in nodes:
            if hasattr(node, "aclose"):
                await node.aclose()


async def call(client: BrokerClient, service: str, method: str, params: Any = None) -> Any:
    return await client.call(service, method, params, timeout=10)


def error_code(exc_info) -> int:
    return exc_info.value.code


# -- customer ------------------------------------------------------------------------------


async def test_customer_get_update_shared_by_replicas(url, client):
    async with serving(url, CustomerRpcNode(), CustomerRpcNode()):
        got = await call(client, "customer", "get_customer", {"customer_id": "cust-0001"})
        assert got == {**catalog.customers()[0]}
        updated = await call(
            client,
            "customer",
            "update_customer",
            {"customer_id": "cust-0001", "updates": {"tier": "gold", "phone": "+1 555"}},
        )
        assert updated["tier"] == "gold" and updated["phone"] == "+1 555"
        assert updated["name"] == got["name"]
        # Whichever replica answers, the update is there: it lives in Redis.
        for _ in range(6):
            again = await call(client, "customer", "get_customer", {"customer_id": "cust-0001"})
            assert again["tier"] == "gold"


async def test_customer_errors(url, client):
    async with serving(url, CustomerRpcNode()):
        with pytest.raises(RpcError) as info:
            await call(client, "customer", "get_customer", {"customer_id": "cust-9999"})
        assert error_code(info) == NOT_FOUND
        with pytest.raises(RpcError) as info:
            await call(
                client,
                "customer",
                "update_customer",
                {"customer_id": "cust-9999", "updates": {"tier": "gold"}},
            )
        assert error_code(info) == NOT_FOUND
        with pytest.raises(InvalidParamsError) as refused:
            await call(
                client,
                "customer",
                "update_customer",
                {"customer_id": "cust-0001", "updates": {"customer_id": "x", "tier": "gold"}},
            )
        assert refused.value.data["fields"] == ["customer_id"]
        for bad in ({}, {"customer_id": 7}, ["cust-0001"]):
            with pytest.raises(InvalidParamsError):
                await call(client, "customer", "get_customer", bad)
        # Nothing was half-applied by the refused update.
        got = await call(client, "customer", "get_customer", {"customer_id": "cust-0001"})
        assert got["tier"] == catalog.customers()[0]["tier"]


async def test_customer_seed_reset_restores_the_catalog(url, client):
    async with serving(url, CustomerRpcNode()):
        params = {"customer_id": "cust-0002", "updates": {"name": "Changed"}}
        await call(client, "customer", "update_customer", params)
        assert (await call(client, "customer", "seed", {}))["seeded"] is False
        assert (await call(client, "customer", "seed", {"reset": True}))["seeded"] is True
        got = await call(client, "customer", "get_customer", {"customer_id": "cust-0002"})
        assert got == catalog.customers()[1]


# -- inventory ------------------------------------------------------------------------------

LAMP = catalog.LIMITED_SKU
LAMP_STOCK = catalog.PRODUCTS[LAMP][2]


async def test_inventory_check_one_sku_and_items(url, client):
    async with serving(url, InventoryRpcNode()):
        one = await call(client, "inventory", "check_availability", {"sku": LAMP, "quantity": 3})
        assert one["available"] == LAMP_STOCK and one["in_stock"] is True
        assert one["unit_price"] == catalog.PRODUCTS[LAMP][1]
        default_qty = await call(client, "inventory", "check_availability", {"sku": "SKU-KB-01"})
        assert default_qty["quantity"] == 1
        many = await call(
            client,
            "inventory",
            "check_availability",
            {"items": [{"sku": LAMP, "quantity": 5}, {"sku": LAMP, "quantity": 5}]},
        )
        assert many["in_stock"] is False  # the same sku twice counts twice
        assert many["items"][0]["quantity"] == 10
        with pytest.raises(RpcError) as info:
            await call(client, "inventory", "check_availability", {"sku": "SKU-NOPE"})
        assert error_code(info) == NOT_FOUND
        with pytest.raises(InvalidParamsError):
            await call(client, "inventory", "check_availability", {"sku": LAMP, "quantity": 0})


async def test_reserve_is_all_or_nothing_and_idempotent(url, client):
    async with serving(url, InventoryRpcNode()):
        items = [{"sku": "SKU-KB-01", "quantity": 2}, {"sku": LAMP, "quantity": 3}]
        first = await call(
            client, "inventory", "reserve_inventory", {"order_id": "o1", "items": items}
        )
        assert first["status"] == "reserved" and first["duplicate"] is False
        again = await call(
            client, "inventory", "reserve_inventory", {"order_id": "o1", "items": items}
        )
        assert again["duplicate"] is True
        with pytest.raises(RpcError) as conflict:
            await call(
                client,
                "inventory",
                "reserve_inventory",
                {"order_id": "o1", "items": [{"sku": LAMP, "quantity": 1}]},
            )
        assert error_code(conflict) == CONFLICT
        # Short on the second item: the first is not taken either.
        with pytest.raises(RpcError) as short:
            await call(
                client,
                "inventory",
                "reserve_inventory",
                {
                    "order_id": "o2",
                    "items": [{"sku": "SKU-KB-01", "quantity": 1}, {"sku": LAMP, "quantity": 6}],
                },
            )
        assert error_code(short) == OUT_OF_STOCK
        assert short.value.data == {
            "reason": "out_of_stock",
            "order_id": "o2",
            "sku": LAMP,
            "requested": 6,
            "available": LAMP_STOCK - 3,
        }
        stock = await call(client, "inventory", "get_stock", {})
        assert stock["stock"]["SKU-KB-01"] == catalog.PRODUCTS["SKU-KB-01"][2] - 2
        assert stock["stock"][LAMP] == LAMP_STOCK - 3
        assert stock["reserved"] == {"SKU-KB-01": 2, LAMP: 3}


async def test_release_gives_stock_back_once_and_blocks_a_late_repeat(url, client):
    async with serving(url, InventoryRpcNode()):
        items = [{"sku": LAMP, "quantity": 4}]
        await call(client, "inventory", "reserve_inventory", {"order_id": "o1", "items": items})
        released = await call(client, "inventory", "release_inventory", {"order_id": "o1"})
        assert released == {"order_id": "o1", "released": True, "items": items}
        twice = await call(client, "inventory", "release_inventory", {"order_id": "o1"})
        assert twice["released"] is False
        nothing = await call(client, "inventory", "release_inventory", {"order_id": "zz"})
        assert nothing == {"order_id": "zz", "released": False, "items": []}
        with pytest.raises(RpcError) as late:
            await call(client, "inventory", "reserve_inventory", {"order_id": "o1", "items": items})
        assert error_code(late) == CONFLICT
        stock = await call(client, "inventory", "get_stock", {})
        assert stock["stock"][LAMP] == LAMP_STOCK and stock["reserved"][LAMP] == 0


async def test_concurrent_reservations_never_oversell(url, client):
    async with serving(url, InventoryRpcNode(), InventoryRpcNode(), concurrency=8):
        outcomes = await asyncio.gather(
            *(
                call(
                    client,
                    "inventory",
                    "reserve_inventory",
                    {"order_id": f"o{i % 30}", "items": [{"sku": LAMP, "quantity": 1}]},
                )
                for i in range(60)
            ),
            return_exceptions=True,
        )
        stock = await call(client, "inventory", "get_stock", {})
    won = {r["order_id"] for r in outcomes if isinstance(r, dict)}
    failed = [r for r in outcomes if not isinstance(r, dict)]
    assert len(won) == LAMP_STOCK
    assert all(isinstance(e, RpcError) and e.code == OUT_OF_STOCK for e in failed)
    assert stock["stock"][LAMP] == 0 and stock["reserved"][LAMP] == LAMP_STOCK


# -- order ----------------------------------------------------------------------------------


async def test_order_create_get_cancel(url, client):
    async with serving(url, OrderRpcNode(), OrderRpcNode()):
        items = [
            {"sku": "SKU-KB-01", "quantity": 2, "unit_price": 89.0},
            {"sku": "SKU-CB-10", "quantity": 3, "unit_price": 9.99},
        ]
        order = await call(
            client, "order", "create_order", {"customer_id": "cust-0001", "items": items}
        )
        assert order["order_id"].startswith("ord-") and order["status"] == "created"
        assert order["total"] == pytest.approx(2 * 89.0 + 3 * 9.99)
        got = await call(client, "order", "get_order", {"order_id": order["order_id"]})
        assert got == order
        cancelled = await call(
            client, "order", "cancel_order", {"order_id": order["order_id"], "reason": "test"}
        )
        assert cancelled["status"] == "cancelled" and cancelled["cancel_reason"] == "test"
        with pytest.raises(RpcError) as info:
            await call(client, "order", "get_order", {"order_id": "ord-999999"})
        assert error_code(info) == NOT_FOUND
        with pytest.raises(RpcError) as info:
            await call(client, "order", "cancel_order", {"order_id": "ord-999999"})
        assert error_code(info) == NOT_FOUND


async def test_order_ids_are_unique_across_replicas(url, client):
    async with serving(url, OrderRpcNode(), OrderRpcNode(), OrderRpcNode(), concurrency=4):
        orders = await asyncio.gather(
            *(
                call(
                    client,
                    "order",
                    "create_order",
                    {"customer_id": "cust-0003", "items": [{"sku": "SKU-KB-01", "quantity": 1}]},
                )
                for _ in range(40)
            )
        )
    assert len({o["order_id"] for o in orders}) == 40


@pytest.mark.parametrize(
    "params",
    [
        {"customer_id": "cust-0001", "items": []},
        {"customer_id": "cust-0001", "items": [{"sku": "SKU-KB-01", "quantity": -1}]},
        {"customer_id": "cust-0001", "items": [{"quantity": 1}]},
        {"customer_id": "cust-0001", "items": [{"sku": "A", "quantity": 1, "unit_price": "x"}]},
        {"items": [{"sku": "SKU-KB-01", "quantity": 1}]},
        {"customer_id": "cust-0001", "items": "SKU-KB-01"},
    ],
)
async def test_order_rejects_bad_params(url, client, params):
    async with serving(url, OrderRpcNode()):
        with pytest.raises(InvalidParamsError):
            await call(client, "order", "create_order", params)


# -- data processing ------------------------------------------------------------------------


async def test_transforms(url, client):
    async with serving(url, DataProcessingRpcNode()):

        async def transform(data, kind, **extra):
            params = {"data": data, "transform_type": kind, **extra}
            return (await call(client, "data-processing", "transform_data", params))["data"]

        assert await transform([1, 3, 5], "normalize") == [0.0, 0.5, 1.0]
        assert await transform([2, 2], "normalize") == [0.0, 0.0]
        z = await transform([1, 2, 3], "standardize")
        assert z[1] == 0.0 and z[0] == pytest.approx(-z[2])
        assert await transform(["a ", "B"], "uppercase") == ["A ", "B"]
        assert await transform([3, 1, 3, None, 2], "drop_nulls") == [3, 1, 3, 2]
        assert await transform([3, 1, 3, 2], "dedupe") == [3, 1, 2]
        assert await transform([3, 1, 2], "sort") == [1, 2, 3]
        assert await transform([1, 2, 3], "cumulative_sum") == [1, 3, 6]
        rows = [{"id": 1, "v": 10}, {"id": 2, "v": 30}]
        assert await transform(rows, "normalize", field="v") == [
            {"id": 1, "v": 0.0},
            {"id": 2, "v": 1.0},
        ]
        big = list(range(20_000))  # large enough to run in a thread
        assert (await transform(big, "normalize"))[-1] == 1.0
        for data, kind in (([1, "a"], "normalize"), ([1], "nope"), ([1, "a"], "sort")):
            with pytest.raises(InvalidParamsError):
                await transform(data, kind)


async def test_aggregates(url, client):
    async with serving(url, DataProcessingRpcNode()):

        async def aggregate(data, aggregation):
            params = {"data": data, "aggregation": aggregation}
            return (await call(client, "data-processing", "aggregate_data", params))["result"]

        assert await aggregate([1, 2, 3, 4], "sum") == 10
        assert await aggregate([1, 2, 3, 4], ["mean", "median", "min", "max", "count"]) == {
            "mean": 2.5,
            "median": 2.5,
            "min": 1,
            "max": 4,
            "count": 4,
        }
        rows = [
            {"region": "eu", "amount": 10},
            {"region": "us", "amount": 5},
            {"region": "eu", "amount": 30},
        ]
        assert await aggregate(rows, {"op": "sum", "field": "amount", "group_by": "region"}) == {
            "eu": 40,
            "us": 5,
        }
        assert await aggregate(rows, {"op": ["count", "max"], "field": "amount"}) == {
            "count": 3,
            "max": 30,
        }
        assert await aggregate([], "mean") is None
        for bad in ("nope", 5, {"op": "sum", "group_by": "x"}):
            with pytest.raises(InvalidParamsError):
                await aggregate([1, 2] if bad != {"op": "sum", "group_by": "x"} else [1], bad)


# -- ML inference ---------------------------------------------------------------------------


async def test_predict(url, client):
    async with serving(url, MLInferenceRpcNode()):
        loyal = {"tenure_months": 60, "monthly_spend": 120, "support_tickets": 0, "is_premium": 1}
        unhappy = {"tenure_months": 2, "monthly_spend": 20, "support_tickets": 6, "is_premium": 0}
        a = await call(
            client, "ml-inference", "predict", {"model_name": "churn", "features": loyal}
        )
        b = await call(
            client, "ml-inference", "predict", {"model_name": "churn", "features": unhappy}
        )
        assert 0 < a["probability"] < 0.1 < 0.9 < b["probability"] < 1
        assert a["label"] is False and b["label"] is True and a["version"] == "2024.1"
        as_list = await call(
            client, "ml-inference", "predict", {"model_name": "churn", "features": [60, 120, 0, 1]}
        )
        assert as_list == a
        models = await call(client, "ml-inference", "list_models", {})
        assert {m["model"] for m in models} == {"churn", "fraud"}
        with pytest.raises(InvalidParamsError) as unknown:
            await call(client, "ml-inference", "predict", {"model_name": "gpt", "features": {}})
        assert unknown.value.data["models"] == ["churn", "fraud"]
        with pytest.raises(InvalidParamsError) as missing:
            await call(
                client,
                "ml-inference",
                "predict",
                {"model_name": "churn", "features": {"tenure_months": 3}},
            )
        assert "monthly_spend" in missing.value.data["missing"]
        with pytest.raises(InvalidParamsError):
            await call(
                client, "ml-inference", "predict", {"model_name": "churn", "features": [1, 2]}
            )


def test_model_file_is_consistent():
    models = load_models()
    for model in models.values():
        assert len(model.features) == len(model.weights) == len(model.means)
        assert all(s > 0 for s in model.scales)


# -- cache ----------------------------------------------------------------------------------


async def test_cache_get_set_delete_and_ttl(url, client):
    async with serving(url, CacheRpcNode(), CacheRpcNode()):
        miss = await call(client, "cache", "get", {"key": "k"})
        assert miss == {"key": "k", "hit": False, "value": None, "ttl": None}
        stored = await call(client, "cache", "set", {"key": "k", "value": {"a": [1, 2]}})
        assert stored == {"key": "k", "stored": True, "ttl": 3600}
        hit = await call(client, "cache", "get", {"key": "k"})
        assert hit["hit"] is True and hit["value"] == {"a": [1, 2]}
        assert 3590 < hit["ttl"] <= 3600
        await call(client, "cache", "set", {"key": "none", "value": None, "ttl": None})
        cached_null = await call(client, "cache", "get", {"key": "none"})
        assert cached_null["hit"] is True and cached_null["ttl"] is None
        await call(client, "cache", "set", {"key": "short", "value": 1, "ttl": 0.2})
        await eventually(
            lambda: _missing(client, "short"), timeout=5, what="the short entry to expire"
        )
        assert (await call(client, "cache", "delete", {"key": "k"}))["deleted"] is True
        assert (await call(client, "cache", "get", {"key": "k"}))["hit"] is False
        for bad in ({"key": "k", "value": 1, "ttl": 0}, {"key": "k"}, {"key": "", "value": 1}):
            with pytest.raises(InvalidParamsError):
                await call(client, "cache", "set", bad)


async def _missing(client: BrokerClient, key: str) -> bool:
    return not (await call(client, "cache", "get", {"key": key}))["hit"]


# -- logging --------------------------------------------------------------------------------


async def test_logs_are_written_when_the_buffer_fills(url, client):
    node = LoggingRpcNode(buffer_size=5, flush_interval=3600)
    async with serving(url, node):
        for i in range(4):
            assert await call(client, "logging", "log", {"message": f"m{i}"}) == {
                "status": "queued"
            }
        assert (await call(client, "logging", "stats", {}))["stored"] == 0
        await call(client, "logging", "log", {"message": "m4", "level": "warning"})
        assert await call(client, "logging", "stats", {}) == {"stored": 5, "buffered": 0}
        tail = await call(client, "logging", "tail", {"count": 2})
        assert [e["message"] for e in tail] == ["m3", "m4"] and tail[1]["level"] == "warning"
        assert all("ts" in e for e in tail)


async def test_logs_are_written_by_the_timer(url, client):
    node = LoggingRpcNode(buffer_size=1000, flush_interval=0.05)
    async with serving(url, node):
        await call(client, "logging", "log", {"message": "timed"})
        await eventually(lambda: _stored(client, 1), timeout=5, what="the timer to write the entry")


async def test_logs_are_written_on_flush(url, client):
    # One worker per embedded broker and test: see the note on `serving` in the report.
    async with serving(url, LoggingRpcNode(buffer_size=1000, flush_interval=3600)):
        await call(client, "logging", "log", {"message": "flushed"})
        assert await call(client, "logging", "flush", {}) == {"flushed": 1}
        assert await _stored(client, 1)
        assert await call(client, "logging", "flush", {}) == {"flushed": 0}


async def _stored(client: BrokerClient, n: int) -> bool:
    return (await call(client, "logging", "stats", {}))["stored"] == n


async def test_queued_logs_are_written_when_the_service_stops(url, client):
    node = LoggingRpcNode(buffer_size=10_000, flush_interval=3600)
    async with serving(url, node, concurrency=16):
        await asyncio.gather(
            *(call(client, "logging", "log", {"message": f"m{i}"}) for i in range(200))
        )
        assert (await call(client, "logging", "stats", {}))["buffered"] == 200
    # serving() stopped the worker and closed the node (what on_stop would do).
    stored = await client.redis.xlen(node.db.stream)
    assert stored == 200


async def test_a_failed_write_keeps_the_entries_in_order(url, client):
    node = LoggingRpcNode(buffer_size=3, flush_interval=3600)
    real = node.db.bulk_insert
    failures = [ConnectionError("redis went away")]

    async def flaky(entries):
        if failures:
            raise failures.pop()
        await real(entries)

    node.db.bulk_insert = flaky
    async with serving(url, node):
        for i in range(2):
            await call(client, "logging", "log", {"message": f"m{i}"})
        with pytest.raises(RpcError):  # the third fills the buffer; its write fails
            await call(client, "logging", "log", {"message": "m2"})
        assert [e["message"] for e in node.log_buffer] == ["m0", "m1", "m2"]
        await call(client, "logging", "log", {"message": "m3"})  # fills it again: written
        assert node.log_buffer == []
        tail = await call(client, "logging", "tail", {"count": 10})
    assert [e["message"] for e in tail] == ["m0", "m1", "m2", "m3"]


async def test_a_full_buffer_answers_overloaded(url, client):
    node = LoggingRpcNode(buffer_size=100, flush_interval=3600, max_buffered=3)
    async with serving(url, node):
        for i in range(3):
            await call(client, "logging", "log", {"message": f"m{i}"})
        with pytest.raises(OverloadedError):
            await call(client, "logging", "log", {"message": "one too many"})
        with pytest.raises(InvalidParamsError):
            await call(client, "logging", "log", ["not", "an", "object"])


# -- analytics ------------------------------------------------------------------------------

RANGE = {"start": "2024-01-01", "end": "2024-01-10"}


async def test_analytics_result_is_deterministic_and_cached(url, client):
    async with serving(url, AnalyticsRpcNode(day_seconds=0)):
        first = await call(
            client, "analytics", "compute_analytics", {"date_range": RANGE, "job_id": "j1"}
        )
        assert first["days"] == 10 and first["cached"] is False
        assert set(first["metrics"]) == {
            "orders",
            "revenue",
            "avg_order_value",
            "unique_customers",
            "conversion_rate",
        }
        m = first["metrics"]
        assert m["orders"] > 0 and m["avg_order_value"] == round(m["revenue"] / m["orders"], 2)
        again = await call(
            client,
            "analytics",
            "compute_analytics",
            {"date_range": ["2024-01-01", "2024-01-10"], "job_id": "j2"},
        )
        assert again["cached"] is True and again["metrics"] == first["metrics"]
        some = await call(
            client,
            "analytics",
            "compute_analytics",
            {"date_range": RANGE, "metrics": ["orders"], "job_id": "j3"},
        )
        assert some["metrics"] == {"orders": m["orders"]}
        status = await call(client, "analytics", "job_status", {"job_id": "j1"})
        assert status["status"] == "done" and status["done_days"] == 10 and status["runs"] == 1
        for bad in (
            {"date_range": {"start": "2024-02-01", "end": "2024-01-01"}},
            {"date_range": "2024"},
            {"date_range": RANGE, "metrics": ["nope"]},
            {"date_range": {"start": "2020-01-01", "end": "2024-01-01"}},
        ):
            with pytest.raises(InvalidParamsError):
                await call(client, "analytics", "compute_analytics", bad)


async def test_a_long_job_does_not_block_the_worker(url, client):
    node = AnalyticsRpcNode(day_seconds=0.05)
    async with serving(url, node, concurrency=4):
        job = asyncio.create_task(
            client.call(
                "analytics",
                "compute_analytics",
                {"date_range": {"start": "2024-03-01", "end": "2024-03-30"}, "job_id": "long"},
                timeout=30,
            )
        )

        async def running_status():
            try:
                status = await call(client, "analytics", "job_status", {"job_id": "long"})
            except RpcError:
                return None
            return status if 0 < status["done_days"] < 30 else None

        started = time.monotonic()
        mid = await eventually(running_status, timeout=10, what="progress while the job runs")
        assert mid["status"] == "running"
        # The same (only) worker answers quickly while the job is still going.
        t0 = time.monotonic()
        await call(client, "analytics", "job_status", {"job_id": "long"})
        assert time.monotonic() - t0 < 0.5
        assert not job.done()
        result = await job
        assert result["days"] == 30 and time.monotonic() - started >= 30 * 0.05 * 0.5
