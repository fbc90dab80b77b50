"""Soak: the lab's worker-crash and Redis-restart scenarios, round after round, for N minutes.

    .venv/bin/python tests/lab/soak.py --minutes 10 [--requests 5000] [--calls 4000]

Each round starts its own redis-server (AOF, appendfsync always), runs the crash scenario
(3 workers, 2 SIGKILLed under load, one started) and the restart scenario (Redis stopped
or SIGKILLed, then restarted, under load), prints one figures line per scenario and every
broken invariant. Exits 1 if any round broke one. Not collected by pytest (no test_ prefix).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
os.environ.setdefault("SPARK_LOG_LEVEL", "ERROR")

from support.lab import crash_scenario, own_redis, redis_restart_scenario, report  # noqa: E402


async def soak(args: argparse.Namespace) -> int:
    ends = time.monotonic() + args.minutes * 60
    rounds = broken = 0
    while time.monotonic() < ends:
        rounds += 1
        with own_redis(appendonly=True, appendfsync="always") as server:
            figures, violations = await crash_scenario(
                server.url, requests=args.requests, tag=f"soak{rounds}"
            )
            report(f"soak[{rounds}].worker_crash", **figures)
            for v in violations:
                print(f"VIOLATION round {rounds} worker_crash: {v}", flush=True)
            broken += bool(violations)
            figures, violations = await redis_restart_scenario(
                server,
                calls=args.calls,
                restarts=args.restarts,
                hard_kill=rounds % 2 == 0,
                tag=f"soak{rounds}",
                known_reply_loss=args.known_reply_loss,
            )
            kind = "sigkill" if rounds % 2 == 0 else "sigterm"
            report(f"soak[{rounds}].redis_restart[{kind}]", **figures)
            for v in violations:
                print(f"VIOLATION round {rounds} redis_restart: {v}", flush=True)
            broken += bool(violations)
    print(f"SOAK done: {rounds} rounds, {broken} scenario runs with violations", flush=True)
    return 1 if broken else 0


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--requests", type=int, default=5000, help="calls per crash round")
    p.add_argument("--calls", type=int, default=4000, help="results per restart round")
    p.add_argument("--restarts", type=int, default=3, help="Redis restarts per round")
    p.add_argument(
        "--known-reply-loss",
        action="store_true",
        help="do not count accepted-but-unanswered calls (the known reply-pop bug) as violations",
    )
    return asyncio.run(soak(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
