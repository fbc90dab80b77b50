"""`spark-edge` as a process: flags, token sources, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import aiohttp
import pytest
import redis.asyncio as aioredis

from spark.broker.keys import ServiceKeys
from support.polling import eventually
from support.processes import WorkerProcess, env
from support.redis_server import free_port, wait_until

pytestmark = pytest.mark.integration


def post(url: str, body: dict, token: str | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def health(url: str) -> int:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status
    except (urllib.error.URLError, OSError):
        return 0


def test_spark_edge_process(redis_url, tmp_path):
    worker = WorkerProcess("support.services:LabRpcNode", redis_url, service="lab").wait_ready()
    token_file = tmp_path / "tokens"
    token_file.write_text("from-file\n\n")
    port = free_port()
    child_env = {**env(), "SPARK_EDGE_TOKENS": "from-env, second"}
    edge = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "spark.cli.edge",
            "--redis",
            redis_url,
            "--port",
            str(port),
            "--default-service",
            "lab",
            "--auth-token",
            "from-flag",
            "--auth-token-file",
            str(token_file),
            "--max-body-bytes",
            "5000",
        ],
        env=child_env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: health(url) == 200 or edge.poll() is not None,
            timeout=20,
            what="spark-edge healthy",
        )
        assert edge.poll() is None
        call = {"jsonrpc": "2.0", "method": "echo", "params": {"a": 1}, "id": 1}
        assert post(url, call)[0] == 401
        for token in ("from-flag", "from-file", "from-env", "second"):
            assert post(url, call, token) == (200, {"jsonrpc": "2.0", "result": {"a": 1}, "id": 1})
        big = {**call, "params": {"blob": "x" * 6000}}
        assert post(url, big, "from-flag")[0] == 413
        edge.send_signal(signal.SIGTERM)
        assert edge.wait(timeout=20) == 0
    finally:
        if edge.poll() is None:
            edge.kill()
            edge.wait()
        worker.stop()


def test_bad_flags_exit_2():
    done = subprocess.run(
        [sys.executable, "-m", "spark.cli.edge", "--ssl-ca-certs", "ca.pem"],
        env=env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "ssl" in done.stderr


def edge_process(redis_url: str, port: int, *flags: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "spark.cli.edge", "--redis", redis_url, "--port", str(port)]
    edge = subprocess.Popen([*cmd, "--default-service", "lab", *flags], env=env())
    url = f"http://127.0.0.1:{port}"
    wait_until(
        lambda: health(url) == 200 or edge.poll() is not None,
        timeout=20,
        what="spark-edge healthy",
    )
    assert edge.poll() is None
    return edge


def closed_by_server(port: int, timeout: float) -> bool:
    """Whether the edge closes a connection on which nothing is ever sent."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            return s.recv(1) == b""
        except TimeoutError:
            return False


async def test_edge_limits_from_flags(redis_url):
    """The issue-12 limits set on the command line reach the running edge. Each budget is
    far below its default, so with a flag ignored the request would have been accepted."""
    worker = WorkerProcess("support.services:LabRpcNode", redis_url, service="lab").wait_ready()
    port = free_port()
    # A request below is ~1.6 KB: two fit in the backlog's 4 KB, not in a socket's 2 KB.
    edge = edge_process(
        redis_url,
        port,
        *("--max-backlog-bytes", "4000"),
        *("--ws-max-inflight-bytes", "2000"),
        *("--idle-timeout", "0.5"),
    )
    url = f"http://127.0.0.1:{port}"
    sleep = {"jsonrpc": "2.0", "method": "sleep", "params": {"seconds": 60, "pad": "x" * 1500}}
    try:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{url}/ws") as ws:
                await ws.send_json({**sleep, "id": 0})
                await ws.send_json({**sleep, "id": 1})
                refused = await ws.receive_json(timeout=30)
            assert refused["id"] == 1
            assert refused["error"]["code"] == -32002
            assert "in flight on this connection" in refused["error"]["message"]
            # Closing the socket cancelled request 0. Two sleeping notifications then hold
            # ~3.2 KB of the service's stream: the next request is refused at enqueue.
            await stream_emptied(redis_url)
            for _ in range(2):
                async with http.post(url, json=sleep) as resp:
                    assert resp.status == 204
            async with http.post(url, json={**sleep, "id": 7, "method": "echo"}) as resp:
                body = await resp.json()
            assert body["id"] == 7 and body["error"]["code"] == -32002, body
        # The default idle timeout is 15 s; the flag's 0.5 s closes a silent connection.
        assert await asyncio.to_thread(closed_by_server, port, 10.0)
        edge.send_signal(signal.SIGTERM)
        assert edge.wait(timeout=20) == 0
    finally:
        if edge.poll() is None:
            edge.kill()
            edge.wait()
        worker.stop()


def test_json_logs_and_the_dashboard(redis_url):
    port = free_port()
    cmd = [sys.executable, "-m", "spark.cli.edge", "--redis", redis_url, "--port", str(port)]
    edge = subprocess.Popen(
        [*cmd, "--log-format", "json", "--auth-token", "t"],
        env={**env(), "SPARK_LOG_LEVEL": "INFO"},
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: health(url) == 200 or edge.poll() is not None, timeout=20, what="edge")
        with urllib.request.urlopen(f"{url}/dashboard?token=t", timeout=10) as resp:
            assert resp.status == 200 and b"<title>Spark RPC dashboard</title>" in resp.read()
        edge.send_signal(signal.SIGTERM)
        _, err = edge.communicate(timeout=20)
    finally:
        if edge.poll() is None:
            edge.kill()
            edge.wait()
    lines = [json.loads(line) for line in err.splitlines()]
    assert any(x["message"].startswith("edge listening on") for x in lines), err
    assert all({"ts", "level", "logger", "message", "pid"} <= set(x) for x in lines)


async def stream_emptied(redis_url: str) -> None:
    r = aioredis.Redis.from_url(redis_url)
    requests = ServiceKeys.for_service("lab").requests

    async def empty() -> bool:
        return await r.xlen(requests) == 0

    try:
        await eventually(empty, what="the lab stream emptied", timeout=30)
    finally:
        await r.aclose()


@pytest.mark.parametrize(
    "flag",
    [
        "--max-backlog-bytes",
        "--ws-max-inflight-bytes",
        "--ws-max-queued",
        "--idle-timeout",
        "--max-body-bytes",
        "--request-timeout",
    ],
)
@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_edge_limits_must_be_positive_numbers(flag, value):
    done = subprocess.run(
        [sys.executable, "-m", "spark.cli.edge", "--redis", "redis://127.0.0.1:1/0", flag, value],
        env=env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    expected = "not a number" if value == "many" else "must be positive"
    assert lines[0].startswith(f"spark-edge: argument {flag}: {expected}: '{value}'")
