"""`python -m workers.demo`: the order workflow end to end, embedded and against real Redis."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import pytest

from support.processes import env

pytestmark = pytest.mark.integration


def run_demo(*args: str, timeout: float = 90) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "workers.demo", *args],
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done, time.monotonic() - started


def check_summary(out: str, orders: int) -> dict[str, int]:
    assert "Summary" in out
    assert re.search(rf"orders\s+{orders} in [\d.]+ s", out)
    succeeded = int(re.search(r"succeeded\s+(\d+)", out).group(1))
    failed = int(re.search(r"failed\s+(\d+)", out).group(1))
    assert succeeded + failed == orders
    assert succeeded > 0
    assert re.search(r"throughput\s+[\d.]+ orders/s", out)
    assert re.search(r"p50 [\d.]+ ms\s+p99 [\d.]+ ms", out)
    # Every failure is one of the workflow's own reasons, never an infrastructure fault.
    reasons = dict(
        (name, int(n))
        for name, n in re.findall(r"(\w+) (\d+)", out.split("failed", 1)[1].split(")")[0])
    )
    assert set(reasons) <= {"invalid", "unknown_customer", "customer_blocked", "out_of_stock"}
    assert reasons.get("invalid") == orders // 10  # every 10th order, from #7 on
    # The limited-edition lamp never goes below zero.
    lamp = re.search(r"SKU-LAMP-LTD: (-?\d+) left, (\d+) reserved", out)
    assert lamp and int(lamp.group(1)) >= 0 and int(lamp.group(1)) + int(lamp.group(2)) == 8
    return reasons


def test_demo_embedded():
    done, seconds = run_demo("--orders", "40")
    assert done.returncode == 0, done.stderr
    reasons = check_summary(done.stdout, 40)
    assert reasons.get("out_of_stock", 0) >= 1  # 5 orders want 2 lamps each; 8 exist
    assert "#0007 FAILED  invalid" in done.stdout
    assert seconds < 30


def test_demo_against_redis_with_processes(redis_url):
    done, seconds = run_demo("--redis", redis_url, "--orders", "40", "--concurrency", "10")
    assert done.returncode == 0, done.stderr
    check_summary(done.stdout, 40)
    assert "spark-worker and spark-edge processes" in done.stdout
    assert seconds < 30
    # A second run starts from the same seed data (the demo resets its catalog).
    again, _ = run_demo("--redis", redis_url, "--orders", "40", "--concurrency", "10")
    assert again.returncode == 0, again.stderr
    check_summary(again.stdout, 40)


def test_demo_reports_an_unreachable_redis():
    done, seconds = run_demo("--redis", "redis://127.0.0.1:1/0", "--orders", "2")
    assert done.returncode == 2
    assert "not reachable" in done.stderr
    assert seconds < 15
