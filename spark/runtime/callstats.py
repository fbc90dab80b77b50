"""Per-method call counts and latency buckets: counted in place, reported in heartbeats.

A worker counts every answered request here (a dict lookup, a bisect, three increments:
nothing allocated per call). Its heartbeats carry `snapshot()`, so `spark status` and the
edge's dashboard compute calls/s, error rates and p50/p99 from the differences between two
heartbeats without scraping anyone; `spark-worker --metrics-port` renders the same figures
for Prometheus (spark.runtime.metrics).

Latencies are kept as counts per bucket (the upper bounds in `BUCKETS`, then +Inf), like a
Prometheus histogram; quantiles are interpolated inside the bucket they fall in.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping
from typing import Any

#: Latency buckets in seconds (+Inf is implied), shared by the edge and the workers.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: Distinct methods counted per worker; the rest are counted as "_other" (junk names).
MAX_METHODS = 100
OTHER = "_other"


class MethodStats:
    __slots__ = ("buckets", "calls", "codes", "errors", "seconds")

    def __init__(self) -> None:
        self.calls = 0
        self.errors = 0
        self.seconds = 0.0
        self.buckets = [0] * (len(BUCKETS) + 1)
        #: Answers by code ("ok" or the JSON-RPC error code).
        self.codes: dict[str, int] = {}


class CallStats:
    def __init__(self) -> None:
        self.methods: dict[str, MethodStats] = {}
        self.reclaimed = 0
        self.retries = 0
        self.dead_lettered = 0
        self.cancelled = 0

    def record(self, method: str, code: str, seconds: float) -> None:
        stats = self.methods.get(method)
        if stats is None:
            if len(self.methods) >= MAX_METHODS:
                method = OTHER
            stats = self.methods.get(method)
            if stats is None:
                stats = self.methods[method] = MethodStats()
        stats.calls += 1
        stats.seconds += seconds
        stats.buckets[bisect_left(BUCKETS, seconds)] += 1
        stats.codes[code] = stats.codes.get(code, 0) + 1
        if code != "ok":
            stats.errors += 1

    def snapshot(self) -> dict[str, Any]:
        """What heartbeats carry: per method calls, errors, seconds and bucket counts."""
        return {
            name: {"calls": s.calls, "errors": s.errors, "seconds": s.seconds, "buckets": s.buckets}
            for name, s in list(self.methods.items())
        }


# -- reading snapshots (status, dashboard) --------------------------------------------------------


def merge(snapshots: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Sum per-method snapshots (of several workers)."""
    total: dict[str, dict[str, Any]] = {}
    for snap in snapshots:
        if not isinstance(snap, Mapping):
            continue
        for name, m in snap.items():
            if not isinstance(m, Mapping):
                continue
            t = total.get(name)
            if t is None:
                t = total[name] = {
                    "calls": 0,
                    "errors": 0,
                    "seconds": 0.0,
                    "buckets": [0] * (len(BUCKETS) + 1),
                }
            t["calls"] += int(m.get("calls") or 0)
            t["errors"] += int(m.get("errors") or 0)
            t["seconds"] += float(m.get("seconds") or 0.0)
            buckets = m.get("buckets")
            if isinstance(buckets, list) and len(buckets) == len(t["buckets"]):
                t["buckets"] = [a + int(b) for a, b in zip(t["buckets"], buckets, strict=True)]
    return total


def diff(new: Mapping[str, Any], old: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """What happened between two merged snapshots (a worker that restarted counts from 0)."""
    out: dict[str, dict[str, Any]] = {}
    for name, n in new.items():
        o = old.get(name)
        if o is None or o["calls"] > n["calls"]:
            out[name] = n
            continue
        out[name] = {
            "calls": n["calls"] - o["calls"],
            "errors": n["errors"] - o["errors"],
            "seconds": n["seconds"] - o["seconds"],
            "buckets": [max(a - b, 0) for a, b in zip(n["buckets"], o["buckets"], strict=True)],
        }
    return out


def quantile(buckets: list[int], q: float) -> float | None:
    """The q-quantile (0..1) of bucketed latencies in seconds, None without observations.

    Interpolated linearly inside its bucket; a value in the +Inf bucket reads as the last bound.
    """
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        if n and seen + n >= rank:
            if i >= len(BUCKETS):
                return float(BUCKETS[-1])
            low = BUCKETS[i - 1] if i > 0 else 0.0
            return low + (BUCKETS[i] - low) * max(rank - seen, 0) / n
        seen += n
    return float(BUCKETS[-1])


def totals(methods: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """All methods together: calls, errors and bucket counts."""
    merged = merge([{"_": m} for m in methods.values()])
    return merged.get(
        "_", {"calls": 0, "errors": 0, "seconds": 0.0, "buckets": [0] * (len(BUCKETS) + 1)}
    )
