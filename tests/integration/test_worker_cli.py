"""`spark-worker` as a deployable process: --check, factories, supervisor, Redis restarts."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import pytest

from spark.client.broker_client import BrokerClient
from spark.errors import RpcConnectionError, RpcTimeoutError
from support.polling import eventually
from support.processes import WorkerProcess, env, live_workers
from support.redis_server import RedisServer, wait_until

pytestmark = pytest.mark.integration


def check(url: str, target: str = "support.services:LabRpcNode", service: str = "lab") -> int:
    cmd = [sys.executable, "-m", "spark.cli.worker", target, "--redis", url, "--check"]
    if service:
        cmd += ["--service", service]
    return subprocess.run(cmd, env=env(), capture_output=True, timeout=30).returncode


def test_check_reports_live_workers(redis_url):
    assert check(redis_url) == 1
    w = WorkerProcess("support.services:LabRpcNode", redis_url, service="lab").wait_ready()
    try:
        assert check(redis_url) == 0
        assert check(redis_url, service="other") == 1
    finally:
        assert w.terminate() == 0
    # Leaving deregisters at once: no stale "live" worker for a probe to believe.
    assert check(redis_url) == 1


def own_check(url: str, health_dir, service: str | None = None) -> int:
    """`spark-worker --check` as a container runs it: no TARGET, this host's records."""
    cmd = [sys.executable, "-m", "spark.cli.worker", "--check", "--health-dir", str(health_dir)]
    cmd += ["--redis", url] + (["--service", service] if service else [])
    return subprocess.run(cmd, env=env(), capture_output=True, timeout=30).returncode


def test_check_tests_this_hosts_own_worker(redis_url, tmp_path):
    """A worker whose own heartbeat stopped fails its check, even while another worker of
    the same service (another container) is live and the service-wide check passes."""
    ours = tmp_path / "health"
    assert own_check(redis_url, ours) == 1  # nothing recorded yet
    mine = WorkerProcess(
        "support.services:LabRpcNode",
        redis_url,
        "--heartbeat",
        "0.2",
        "--health-dir",
        str(ours),
        service="lab",
    ).wait_ready()
    other = WorkerProcess("support.services:LabRpcNode", redis_url, service="lab")
    try:
        other.wait_ready(count=2)
        assert own_check(redis_url, ours) == 0
        assert own_check(redis_url, ours, service="lab") == 0
        assert own_check(redis_url, ours, service="other") == 1
        mine.signal(signal.SIGSTOP)  # alive but hung: its heartbeat goes stale
        try:
            wait_until(lambda: own_check(redis_url, ours) == 1, timeout=20, what="stale check")
            assert check(redis_url) == 0  # the service-wide check still passes
        finally:
            mine.signal(signal.SIGCONT)
        wait_until(lambda: own_check(redis_url, ours) == 0, timeout=20, what="fresh again")
        assert mine.terminate() == 0
        assert not list(ours.glob("*.json"))  # a clean exit removes its record
        assert own_check(redis_url, ours) == 1
    finally:
        mine.stop()
        other.stop()


def test_check_with_unreachable_broker_fails():
    server = RedisServer().start()
    url = server.url
    server.cleanup()
    assert check(url) == 2


async def test_factory_target_and_derived_service_name(redis_url):
    w = WorkerProcess("support.services:make_lab_node", redis_url)
    w.service = "lab"  # LabRpcNode -> "lab" by the naming rule
    w.wait_ready()
    try:
        async with BrokerClient(redis_url) as client:
            assert await client.call("lab", "echo", {"via": "factory"}) == {"via": "factory"}
    finally:
        w.stop()


def test_supervisor_restarts_crashed_children_and_exits_zero(redis_url):
    pool = WorkerProcess(
        "support.services:LabRpcNode",
        redis_url,
        "--processes",
        "2",
        "--reclaim-after",
        "1",
        service="lab",
    )
    try:
        pool.wait_ready(count=2)

        async def crash_one() -> None:
            async with BrokerClient(redis_url) as client:
                with pytest.raises(RpcTimeoutError):
                    await client.call("lab", "crash", {}, timeout=0.5)

        asyncio.run(crash_one())
        # A child died; the supervisor starts another: two live workers again.
        wait_until(lambda: live_workers(redis_url, "lab") >= 2, timeout=20, what="restart")
        assert pool.terminate(timeout=40) == 0
    finally:
        pool.stop()


async def test_workers_and_clients_reconnect_after_redis_restarts():
    server = RedisServer(appendonly=True, appendfsync="always").start()
    worker = WorkerProcess("support.services:LabRpcNode", server.url, service="lab")
    client = BrokerClient(server.url)
    try:
        worker.wait_ready()
        assert await client.call("lab", "echo", {"n": 1}) == {"n": 1}
        server.stop()
        started = time.monotonic()
        with pytest.raises((RpcConnectionError, RpcTimeoutError)):
            await client.call("lab", "echo", {"n": 2}, timeout=2)
        assert time.monotonic() - started < 5  # an answer, not a hang
        server.start()

        async def answered() -> bool:
            try:
                return await client.call("lab", "echo", {"n": 3}, timeout=2) == {"n": 3}
            except (RpcConnectionError, RpcTimeoutError):
                return False

        assert await eventually(answered, timeout=30, what="a call after the restart")
        assert worker.proc.poll() is None
        worker.signal(signal.SIGTERM)
        assert await asyncio.to_thread(worker.proc.wait, 30) == 0
    finally:
        await client.aclose()
        worker.stop()
        server.cleanup()
