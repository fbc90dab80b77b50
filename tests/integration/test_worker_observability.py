"""A `spark-worker` process seen from outside: Prometheus metrics over HTTP, JSON log lines,
and `rpc.discover`."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time

import aiohttp
import orjson
import pytest
from opentelemetry import context, trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from spark.client.broker_client import BrokerClient
from spark.client.http import HttpTransport
from spark.client.websocket import WebSocketTransport
from spark.errors import InternalError
from spark.runtime.edge import EdgeConfig, EdgeServer
from support import metrics
from support.polling import eventually
from support.processes import WorkerProcess, env, live_workers
from support.redis_server import free_port, wait_until

pytestmark = pytest.mark.integration

TARGET = "support.services:LabRpcNode"
TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C


async def scrape(http: aiohttp.ClientSession, port: int) -> str:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


@pytest.fixture
def scraped(redis_url):
    """(port) of a LabRpcNode worker process serving metrics."""
    port = free_port()
    worker = WorkerProcess(
        TARGET, redis_url, "--metrics-port", str(port), "--heartbeat", "0.2", service="lab"
    ).wait_ready()
    yield port
    worker.stop()


async def test_worker_is_scrapeable(redis_url, scraped):
    port = scraped
    async with BrokerClient(redis_url) as client, aiohttp.ClientSession() as http:
        for i in range(3):
            assert await client.call("lab", "echo", {"i": i}, timeout=10) == {"i": i}
        with pytest.raises(InternalError):
            await client.call("lab", "fail", {}, timeout=10)
        slow = asyncio.create_task(client.call("lab", "sleep", {"seconds": 30}, timeout=60))

        async def one_in_flight():
            return metrics.value(await scrape(http, port), "spark_worker_inflight") == 1

        await eventually(one_in_flight, what="the sleeping handler counted in flight")
        text = await scrape(http, port)
        slow.cancel()
    ok = {"service": "lab", "method": "echo", "code": "ok"}
    assert metrics.value(text, "spark_worker_calls_total", **ok) == 3
    failed = {"service": "lab", "method": "fail", "code": "-32603"}
    assert metrics.value(text, "spark_worker_calls_total", **failed) == 1
    echo = {"service": "lab", "method": "echo"}
    assert metrics.value(text, "spark_worker_handler_seconds_count", **echo) == 3
    assert metrics.value(text, "spark_worker_handler_seconds_bucket", le="+Inf", **echo) == 3
    for name in (
        "spark_worker_reclaimed_total",
        "spark_worker_retries_total",
        "spark_worker_dead_lettered_total",
        "spark_worker_cancelled_total",
        "spark_worker_backlog",
    ):
        assert name in metrics.names(text), name
    assert not any(n.endswith("_created") for n in metrics.names(text))


async def test_cancelled_is_counted(redis_url, scraped):
    port = scraped
    async with BrokerClient(redis_url) as client, aiohttp.ClientSession() as http:
        slow = asyncio.create_task(client.call("lab", "sleep", {"seconds": 30}, timeout=60))

        async def running():
            return metrics.value(await scrape(http, port), "spark_worker_inflight") == 1

        await eventually(running, what="the handler running")
        slow.cancel()

        async def cancelled():
            text = await scrape(http, port)
            return metrics.value(text, "spark_worker_cancelled_total", service="lab") == 1

        await eventually(cancelled, what="the cancel counted")


def test_json_log_lines_carry_the_request(redis_url):
    cmd = [sys.executable, "-m", "spark.cli.worker", TARGET, "--redis", redis_url]
    cmd += ["--service", "lab", "--log-format", "json"]
    proc = subprocess.Popen(
        cmd, env={**env(), "SPARK_LOG_LEVEL": "INFO"}, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_until(lambda: live_workers(redis_url, "lab") >= 1, timeout=15, what="worker")

        async def calls():
            # A caller's trace, whether or not this process has an SDK installed.
            parent = SpanContext(TRACE_ID, 0x1234, is_remote=False, trace_flags=TraceFlags(1))
            async with BrokerClient(redis_url) as client:
                token = context.attach(trace.set_span_in_context(NonRecordingSpan(parent)))
                try:
                    await client.call("lab", "echo", {"x": 1}, timeout=10)
                finally:
                    context.detach(token)
                with pytest.raises(InternalError):
                    await client.call("lab", "fail", {}, timeout=10)
                return client.client_id

        client_id = asyncio.run(calls())
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    lines = [orjson.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert lines and len(lines) == len(err.splitlines()), err  # every line is one JSON object
    answered = [x for x in lines if x["logger"] == "spark.requests"]
    assert [(x["method"], x["outcome"], x["code"]) for x in answered] == [
        ("echo", "ok", "ok"),
        ("fail", "error", "-32603"),
    ]
    assert answered[0]["trace_id"] == format(TRACE_ID, "032x")
    # Called outside that trace (a root span of its own if this process has an SDK).
    assert answered[1].get("trace_id") != answered[0]["trace_id"]
    for line in answered:
        assert line["service"] == "lab"
        assert line["client_id"] == client_id
        assert line["request_id"]
        assert line["worker"].startswith(os.uname().nodename)
        assert isinstance(line["duration_ms"], float)
    # The handler's traceback is logged with the request it belongs to.
    (raised,) = [x for x in lines if "raised" in x["message"]]
    assert raised["method"] == "fail"
    assert raised["request_id"] == answered[1]["request_id"]
    assert raised["client_id"] == client_id
    assert "ValueError" in raised["exception"]


async def test_rpc_discover_describes_the_service(redis_url):
    worker = WorkerProcess("support.services:DocumentedRpcNode", redis_url, service="doc")
    worker.wait_ready()
    try:
        async with BrokerClient(redis_url) as client:
            doc = await client.call("doc", "rpc.discover", timeout=10)
        # The same document over every transport.
        async with EdgeServer(EdgeConfig(redis_url=redis_url, port=0)) as edge:
            async with HttpTransport(edge.url, service="doc") as http:
                assert await http.call("rpc.discover", deadline=time.time() + 10) == doc
            async with WebSocketTransport(edge.url, service="doc") as ws:
                assert await ws.call("rpc.discover", deadline=time.time() + 10) == doc
    finally:
        worker.stop()
    assert doc["openrpc"].startswith("1.")
    assert doc["info"]["title"] == "doc"
    methods = {m["name"]: m for m in doc["methods"]}
    assert set(methods) == {"add", "greet"}
    add = methods["add"]
    assert add["summary"] == "Add two numbers."
    assert add["paramStructure"] == "by-position"
    assert [(p["name"], p["schema"]) for p in add["params"]] == [
        ("a", {"type": "integer"}),
        ("b", {"type": "integer"}),
    ]
    assert add["result"]["schema"] == {"type": "integer"}
    greet = methods["greet"]
    assert greet["paramStructure"] == "by-name"
    assert {p["name"]: p["required"] for p in greet["params"]} == {"name": True, "shout": False}


def test_a_busy_metrics_port_is_one_line_and_exit_2(redis_url):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cmd = [sys.executable, "-m", "spark.cli.worker", TARGET, "--redis", redis_url]
        cmd += ["--service", "lab", "--metrics-port", str(port), "--metrics-host", "127.0.0.1"]
        done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == f"spark-worker: cannot listen on 127.0.0.1:{port}: " + (
        "Address already in use"
    )
    assert live_workers(redis_url, "lab") == 0
