"""`make bench`: every benchmark script, one after the other, each against its own
redis-server, each printing its figures next to a raw baseline measured in the same run."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_edge
import bench_observability
import bench_redis
import bench_state

BENCHMARKS = [
    ("redis transport (issue 3)", bench_redis.main),
    ("edge: HTTP and WebSocket (issue 4)", bench_edge.main),
    ("GraphState on Redis (issue 6)", bench_state.main),
    ("observability overhead (issue 14)", bench_observability.main),
]


def main() -> int:
    failed = 0
    for title, run in BENCHMARKS:
        print(f"\n=== {title} ===", flush=True)
        started = time.perf_counter()
        try:
            run([])
        except Exception as exc:  # one broken benchmark should not hide the others' figures
            failed += 1
            print(f"FAILED: {type(exc).__name__}: {exc}", flush=True)
        print(f"({time.perf_counter() - started:.1f} s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
