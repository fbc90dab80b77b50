"""Pieces of observability with no I/O: call stats and quantiles, reply codes, JSON log
lines, the OpenRPC document, and tracing switched off."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
import uuid

import pytest

from spark.broker import ServiceQueue, connect
from spark.broker.envelope import Envelope, decode_reply
from spark.broker.replies import START, read
from spark.context import CallInfo, current_call
from spark.logs import CallFilter, JsonFormatter, resolve_format
from spark.runtime import callstats
from spark.runtime.callstats import BUCKETS, CallStats, quantile
from spark.runtime.discovery import answering_discover, document
from spark.runtime.metrics import code_of
from spark.runtime.worker import Worker, WorkerConfig
from support import metrics
from support.polling import eventually


def test_call_stats_count_in_place():
    stats = CallStats()
    stats.record("echo", "ok", 0.0004)
    stats.record("echo", "ok", 0.003)
    stats.record("echo", "-32603", 0.2)
    snap = stats.snapshot()["echo"]
    assert snap["calls"] == 3 and snap["errors"] == 1
    assert sum(snap["buckets"]) == 3
    assert snap["buckets"][0] == 1  # 0.4 ms is in the first bucket (<= 0.5 ms)
    assert stats.methods["echo"].codes == {"ok": 2, "-32603": 1}


def test_junk_method_names_share_one_series():
    stats = CallStats()
    for i in range(callstats.MAX_METHODS + 50):
        stats.record(f"m{i}", "-32601", 0.001)
    assert len(stats.methods) == callstats.MAX_METHODS + 1
    assert stats.methods[callstats.OTHER].calls == 50


def test_quantiles_interpolate_inside_buckets():
    buckets = [0] * (len(BUCKETS) + 1)
    assert quantile(buckets, 0.5) is None
    buckets[BUCKETS.index(0.01)] = 100  # all between 5 and 10 ms
    assert quantile(buckets, 0.5) == pytest.approx(0.0075)
    assert quantile(buckets, 0.99) == pytest.approx(0.00995)
    buckets[-1] = 1000  # slower than the last bound
    assert quantile(buckets, 0.99) == BUCKETS[-1]


def test_merge_and_diff_of_heartbeat_snapshots():
    a, b = CallStats(), CallStats()
    a.record("x", "ok", 0.001)
    b.record("x", "ok", 0.002)
    before = callstats.merge([a.snapshot(), b.snapshot()])
    a.record("x", "-32000", 0.001)
    after = callstats.merge([a.snapshot(), b.snapshot(), "junk"])
    delta = callstats.diff(after, before)
    assert (delta["x"]["calls"], delta["x"]["errors"]) == (1, 1)
    # A worker that restarted counts from zero: its figures are taken as they are.
    assert callstats.diff(before, after)["x"]["calls"] == 2


def test_code_of_reads_only_error_replies():
    assert code_of(b'{"id":"1","result":{"error": 1}}') == "ok"  # a result mentioning "error"
    assert code_of(b'{"id":"1","result":{"note":"x"}}') == "ok"
    assert code_of(b'{"id":"1","error":{"code":-32601,"message":"m"}}') == "-32601"
    assert code_of(b'{"id":"1","error":') == "error"


def test_json_log_lines_carry_the_call_being_served():
    record = logging.LogRecord("spark.x", logging.ERROR, __file__, 1, "boom %s", ("!",), None)
    token = current_call.set(CallInfo(request_id="r1", service="svc", method="m", client_id="c1"))
    try:
        CallFilter().filter(record)
        line = json.loads(JsonFormatter().format(record))
        text_tag = record.spark_call
    finally:
        current_call.reset(token)
    assert line["message"] == "boom !"
    assert (line["service"], line["method"], line["request_id"], line["client_id"]) == (
        "svc",
        "m",
        "r1",
        "c1",
    )
    assert text_tag == " [svc.m id=r1 client=c1]"
    assert "spark_call" not in line


def test_log_format_is_checked(monkeypatch):
    monkeypatch.setenv("SPARK_LOG_FORMAT", "JSON")
    assert resolve_format(None) == "json"
    assert resolve_format("text") == "text"
    with pytest.raises(ValueError):
        resolve_format("xml")


class Plain:
    def process(self, data):
        """Upper-cases the text."""


class Odd:
    async def rpc_loose(self, *args, context=None):
        return args

    async def rpc_untyped(self, params, context):
        return params


def test_openrpc_document_of_plain_and_odd_targets():
    doc = document(Plain(), "plain")
    assert [m["name"] for m in doc["methods"]] == ["process"]
    assert doc["methods"][0]["summary"] == "Upper-cases the text."
    odd = {m["name"]: m for m in document(Odd(), "odd")["methods"]}
    assert odd["loose"]["params"] == []
    assert odd["untyped"]["params"] == [{"name": "params", "schema": {"type": "object"}}]
    assert odd["untyped"]["result"]["schema"] == {}


async def test_discover_is_answered_before_the_target():
    seen = []

    async def handler(method, params, call):
        seen.append(method)
        return "handled"

    handle = answering_discover(handler, Odd(), "odd")
    call = CallInfo(request_id="1", service="odd", method="rpc.discover")
    doc = await handle("rpc.discover", None, call)
    assert doc["info"]["title"] == "odd"
    assert await handle("other", None, call) == "handled"
    assert seen == ["other"]


def test_without_opentelemetry_calls_work_and_tracing_is_off():
    # The package made unimportable, as on a machine without the `otel` extra.
    code = (
        "import sys, asyncio\n"
        "sys.modules['opentelemetry'] = None\n"
        "import spark.tracing\n"
        "from spark.client.broker_client import BrokerClient\n"
        "from spark.runtime.worker import run_worker\n"
        "from spark.nodes.rpc import RpcNode\n"
        "assert not spark.tracing.ENABLED\n"
        "assert spark.tracing.inject() is None and spark.tracing.current_ids() is None\n"
        "class Echo(RpcNode):\n"
        "    async def rpc_echo(self, params, context):\n"
        "        return params\n"
        "async def main():\n"
        "    stop, ready = asyncio.Event(), asyncio.Event()\n"
        "    task = asyncio.create_task(run_worker(Echo(), url='memory://otel-off', stop=stop,"
        " ready=ready))\n"
        "    await ready.wait()\n"
        "    async with BrokerClient('memory://otel-off') as c:\n"
        "        print(await c.call('echo', 'echo', {'a': 1}, timeout=5))\n"
        "    stop.set()\n"
        "    await task\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "{'a': 1}"


async def test_worker_counts_reclaims_retries_and_dead_letters():
    """A dead worker's entries: reclaimed and run again (a retry), and past
    max_deliveries dead-lettered, each counted and shown to Prometheus."""
    url = "memory://observability-reclaims"
    redis = connect(url)
    queue = ServiceQueue(redis, "svc")
    await queue.ensure_group()
    await queue.enqueue([Envelope(id="a", method="echo").encode()])
    await queue.enqueue([Envelope(id="b", method="echo").encode()])
    # A consumer that died holding both, "a" delivered twice already, "b" once.
    await queue.read(redis, "dead-worker", 2, 10)
    assert [e.deliveries for e in await queue.reclaim("dead-worker", 0, 1)] == [2]

    async def handler(method, params, call):
        return "done"

    config = WorkerConfig(service="svc", reclaim_after=0.2, max_deliveries=2, metrics_port=0)
    worker = Worker(handler, config, url)
    serving = asyncio.create_task(worker.serve())
    try:
        stats = worker.observer.stats
        await eventually(lambda: stats.reclaimed == 2, what="both entries reclaimed")
        await eventually(lambda: stats.retries + stats.dead_lettered == 2, what="both handled")
        text = worker.metrics.render().decode()
    finally:
        worker.stop()
        await serving
        await redis.aclose()
    assert stats.retries == 1 and stats.dead_lettered == 1
    for name in ("reclaimed", "retries", "dead_lettered"):
        total = metrics.value(text, f"spark_worker_{name}_total", service="svc")
        assert total == getattr(stats, name), name


@pytest.mark.parametrize(
    "trace",
    [
        {"traceparent": 5},
        {"traceparent": "00-zz-not-hex-01"},
        {"traceparent": "x" * 1000},
        {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "tracestate": 7},
        {"tracestate": "only a state"},
        ["not", "an", "object"],
    ],
)
async def test_junk_trace_context_costs_the_trace_not_the_request(trace):
    """A foreign producer's odd `trace` field: the request is answered all the same."""
    url = f"memory://junk-trace-{uuid.uuid4().hex}"
    redis = connect(url)

    async def handler(method, params, call):
        return "ran"

    worker = Worker(handler, WorkerConfig(service="svc"), url)
    serving = asyncio.create_task(worker.serve())
    try:
        await asyncio.wait_for(worker.ready.wait(), 5)
        env = Envelope(id="1", method="m", reply_to="c1", deadline=9e9, trace=trace)
        await ServiceQueue(redis, "svc").enqueue([env.encode()])
        (entry,) = await read(redis, "c1", START, 5)
        assert decode_reply(entry[1])[:2] == ("1", "ran")
    finally:
        worker.stop()
        await serving
        await redis.aclose()


def test_spans_are_recorded_once_a_provider_is_set_after_requests_were_served():
    # `wanted` is answered from a cached lookup on the hot path: an SDK provider set later
    # (an application configuring tracing after its first requests) must still be seen.
    # A fresh process: OpenTelemetry's global provider can be set only once.
    code = (
        "import spark.tracing as t\n"
        "from opentelemetry import trace\n"
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "assert t.ENABLED\n"
        "assert [t.wanted(None) for _ in range(3)] == [False] * 3\n"
        "assert t.wanted({'traceparent': 'x'})\n"
        "trace.set_tracer_provider(TracerProvider())\n"
        "assert t.wanted(None) and t.wanted(None)\n"
        "with t.server_span(None, 'svc', 'm') as span:\n"
        "    assert span._span is not None and span._span.is_recording()\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
