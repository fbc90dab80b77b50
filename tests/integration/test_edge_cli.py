"""`spark-edge` as a process: flags, token sources, SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

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
