"""One service as operators see it, from its workers' heartbeats and its streams.

What `spark status` prints and the edge's dashboard shows: each live worker (pid, host,
uptime, processed, failed, in flight), calls served and the error rate, per-method calls and
p50/p99 latency (since the workers started), backlog, pending, dead letters and the age of
the oldest queued request. Pure functions over `admin.ServiceStatus`; no I/O.
"""

from __future__ import annotations

import time
from typing import Any

from spark.broker.admin import ServiceStatus
from spark.runtime import callstats


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) else 0


def worker_rows(workers: dict[str, dict], now: float | None = None) -> list[dict[str, Any]]:
    now = time.time() if now is None else now
    rows = []
    for name, info in sorted(workers.items()):
        started = info.get("started_at")
        rows.append(
            {
                "id": name,
                "pid": info.get("pid"),
                "host": info.get("host"),
                "state": info.get("state"),
                "uptime": round(now - started, 1) if isinstance(started, int | float) else None,
                "processed": _int(info.get("processed")),
                "failed": _int(info.get("failed")),
                "inflight": _int(info.get("inflight")),
                "concurrency": info.get("concurrency"),
            }
        )
    return rows


def method_rows(methods: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method: calls, errors, p50/p99 in milliseconds (None without calls)."""
    rows = []
    for name, m in sorted(methods.items()):
        rows.append(
            {
                "method": name,
                "calls": m["calls"],
                "errors": m["errors"],
                "p50_ms": _ms(callstats.quantile(m["buckets"], 0.5)),
                "p99_ms": _ms(callstats.quantile(m["buckets"], 0.99)),
            }
        )
    return rows


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def error_rate(calls: int, errors: int) -> float | None:
    return None if calls == 0 else round(errors / calls, 4)


def service_overview(status: ServiceStatus, now: float | None = None) -> dict[str, Any]:
    workers = worker_rows(status.worker_info, now)
    methods = callstats.merge(info.get("methods") or {} for info in status.worker_info.values())
    total = callstats.totals(methods)
    served = sum(w["processed"] for w in workers)
    failed = sum(w["failed"] for w in workers)
    return {
        **status.to_dict(),
        "worker_list": workers,
        "served": served,
        "failed": failed,
        "error_rate": error_rate(total["calls"], total["errors"]),
        "p50_ms": _ms(callstats.quantile(total["buckets"], 0.5)),
        "p99_ms": _ms(callstats.quantile(total["buckets"], 0.99)),
        "methods": method_rows(methods),
    }
