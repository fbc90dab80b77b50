"""`make bench`: the performance table (bench_perf: every way in next to its reference, scale
curves, memory; written to results/latest.md), then GraphState on Redis (bench_state)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_cluster
import bench_observability
import bench_perf
import bench_state

BENCHMARKS = [
    ("performance table (issue 15)", bench_perf.main),
    ("GraphState on Redis (issue 6)", bench_state.main),
    ("Redis Cluster: services over 3 shards vs one Redis (issue 13)", bench_cluster.main),
    ("observability overhead (issue 14)", bench_observability.main),
]


def main(argv: list[str] | None = None) -> int:
    failed = 0
    for title, run in BENCHMARKS:
        print(f"\n=== {title} ===", flush=True)
        started = time.perf_counter()
        try:
            run(list(argv or []) if run is bench_perf.main else [])
        except Exception as exc:  # one broken benchmark should not hide the others' figures
            failed += 1
            print(f"FAILED: {type(exc).__name__}: {exc}", flush=True)
        print(f"({time.perf_counter() - started:.1f} s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
