"""Analytics service: `spark-worker workers.analytics:AnalyticsRpcNode` (service `analytics`).

`compute_analytics(date_range, metrics)` is the long-running kind of request: it works
through the range a day at a time, the CPU part of each day in a thread and a pause between
days (`day_seconds`: constructor argument, else `$WORKERS_ANALYTICS_DAY_SECONDS`, default
0.1 s, so a year takes about 40 s; set it higher to model minutes of work). Because the
handler keeps yielding to the event loop, the same worker meanwhile answers its other
requests (`job_status`, other jobs), sends heartbeats and renews the request's lease, so
other workers never reclaim a request whose worker is alive, however long it runs. Give
such a pool a request timeout (and `--grace`) that covers the longest job.

State in Redis: each job's progress (`shop:{analytics}:job:<job_id>`, for `job_status`),
how many times each job id was started (`...:runs`), and finished results for an hour
(`...:result:<range+metrics>`): a repeat of the same question is answered from there.

`date_range`: `{"start": "2024-01-01", "end": "2024-01-31"}` or `["2024-01-01",
"2024-01-31"]` (inclusive, at most 366 days). `metrics`: any of orders, revenue,
avg_order_value, unique_customers, conversion_rate (default: all). `job_id` (optional)
names the job for `job_status`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
import random
import socket
import time
import uuid
from typing import Any

from spark.errors import InvalidParamsError
from workers.base import NotFoundError, RedisRpcNode, dumps, env_float, loads

METRICS = ("orders", "revenue", "avg_order_value", "unique_customers", "conversion_rate")
MAX_DAYS = 366
RESULT_TTL = 3600
JOB_TTL = 24 * 3600


def parse_range(date_range: Any) -> tuple[dt.date, dt.date]:
    if isinstance(date_range, dict):
        start, end = date_range.get("start"), date_range.get("end")
    elif isinstance(date_range, list) and len(date_range) == 2:
        start, end = date_range
    else:
        raise InvalidParamsError(
            'date_range must be {"start": "YYYY-MM-DD", "end": "YYYY-MM-DD"} or [start, end]'
        )
    try:
        first, last = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    except (TypeError, ValueError):
        raise InvalidParamsError(
            "dates must be YYYY-MM-DD", data={"date_range": date_range}
        ) from None
    days = (last - first).days + 1
    if not 0 < days <= MAX_DAYS:
        raise InvalidParamsError(f"date_range must cover 1 to {MAX_DAYS} days", data={"days": days})
    return first, last


def parse_metrics(metrics: Any) -> list[str]:
    if metrics is None:
        return list(METRICS)
    if not isinstance(metrics, list) or not metrics:
        raise InvalidParamsError("metrics must be a non-empty list", data={"known": list(METRICS)})
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise InvalidParamsError(
            "unknown metrics", data={"unknown": unknown, "known": list(METRICS)}
        )
    return list(dict.fromkeys(metrics))


def day_facts(day: dt.date) -> dict[str, Any]:
    """One day of (synthetic, deterministic) shop events, reduced: the CPU part of a day."""
    rng = random.Random(day.toordinal())
    visits = 2_000 + rng.randrange(3_000)
    orders, revenue, customers = 0, 0.0, set()
    for _ in range(visits):
        if rng.random() < 0.04:
            orders += 1
            revenue += round(rng.uniform(10, 600), 2)
            customers.add(rng.randrange(5_000))
    return {"visits": visits, "orders": orders, "revenue": revenue, "customers": customers}


class AnalyticsEngine:
    """The seed's `self.analytics`."""

    def __init__(self, node: AnalyticsRpcNode):
        self.node = node

    async def compute(
        self, first: dt.date, last: dt.date, metrics: list[str], job_id: str
    ) -> dict[str, Any]:
        node = self.node
        client = node.redis_client
        job_key = node.key("job", job_id)
        total = (last - first).days + 1
        await client.hset(
            job_key,
            mapping={
                "status": "running",
                "done_days": 0,
                "total_days": total,
                "started_at": time.time(),
                "worker": f"{socket.gethostname()}:{os.getpid()}",
            },
        )
        await client.expire(job_key, JOB_TTL)
        await client.hincrby(node.key("runs"), job_id, 1)
        visits = orders = 0
        revenue = 0.0
        customers: set[int] = set()
        for i in range(total):
            facts = await asyncio.to_thread(day_facts, first + dt.timedelta(days=i))
            visits += facts["visits"]
            orders += facts["orders"]
            revenue += facts["revenue"]
            customers |= facts["customers"]
            await client.hset(job_key, "done_days", i + 1)
            if node.day_seconds > 0:
                await asyncio.sleep(node.day_seconds)
        values = {
            "orders": orders,
            "revenue": round(revenue, 2),
            "avg_order_value": round(revenue / orders, 2) if orders else 0.0,
            "unique_customers": len(customers),
            "conversion_rate": round(orders / visits, 5) if visits else 0.0,
        }
        result = {
            "job_id": job_id,
            "date_range": {"start": first.isoformat(), "end": last.isoformat()},
            "days": total,
            "metrics": {m: values[m] for m in metrics},
        }
        await client.hset(job_key, mapping={"status": "done", "finished_at": time.time()})
        return result


class AnalyticsRpcNode(RedisRpcNode):
    """Analytics processing (can be slower)."""

    def __init__(self, day_seconds: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.day_seconds = (
            day_seconds
            if day_seconds is not None
            else env_float("WORKERS_ANALYTICS_DAY_SECONDS", 0.1)
        )
        self.analytics = AnalyticsEngine(self)

    async def rpc_compute_analytics(self, params, context):
        """Compute analytics (long-running)."""
        if not isinstance(params, dict):
            raise InvalidParamsError("params must be an object")
        first, last = parse_range(params.get("date_range"))
        metrics = parse_metrics(params.get("metrics"))
        job_id = params.get("job_id") or uuid.uuid4().hex
        if not isinstance(job_id, str) or len(job_id) > 64:
            raise InvalidParamsError("job_id must be a string of at most 64 characters")
        cache_key = self.key(
            "result",
            hashlib.sha256(dumps([first.isoformat(), last.isoformat(), metrics])).hexdigest(),
        )
        cached = await self.redis_client.get(cache_key)
        if cached is not None:
            return {**loads(cached), "job_id": job_id, "cached": True}

        # Can take minutes - doesn't block other services
        result = await self.analytics.compute(first, last, metrics, job_id)
        await self.redis_client.set(cache_key, dumps(result), ex=RESULT_TTL)
        return {**result, "cached": False}

    async def rpc_job_status(self, params, context):
        """Progress of a job: status, done_days, total_days, worker, runs."""
        job_id = params.get("job_id") if isinstance(params, dict) else None
        if not isinstance(job_id, str):
            raise InvalidParamsError("job_id must be a string")
        client = self.redis_client
        raw = await client.hgetall(self.key("job", job_id))
        if not raw:
            raise NotFoundError("no such job", data={"job_id": job_id})
        doc: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items()}
        for field in ("done_days", "total_days"):
            doc[field] = int(doc[field])
        runs = await client.hget(self.key("runs"), job_id)
        return {"job_id": job_id, **doc, "runs": int(runs or 0)}
