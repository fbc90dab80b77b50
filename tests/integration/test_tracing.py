"""One trace from the caller through the edge to a worker and on to a nested call.

The caller and the edge run here, the workers in their own `spark-worker` processes; every
process records spans with the OpenTelemetry SDK's in-memory exporter (the workers hand
theirs back through `rpc_spans`), and the trace ids and parent links are compared.
"""

from __future__ import annotations

import time

import pytest
from opentelemetry import trace

from spark import tracing
from spark.client.broker_client import BrokerClient
from spark.client.http import HttpTransport
from spark.client.websocket import WebSocketTransport
from spark.errors import InternalError
from spark.runtime.edge import EdgeConfig, EdgeServer
from support.processes import WorkerProcess
from support.traced_services import EXPORTER, SAMPLER, span_dict

pytestmark = pytest.mark.integration

TARGET = "support.traced_services:TracedRpcNode"


@pytest.fixture(autouse=True, scope="module")
def recording():
    """Spans are recorded in this process during these tests only."""
    SAMPLER.on = True
    yield
    SAMPLER.on = False
    EXPORTER.clear()


@pytest.fixture
def workers(redis_url):
    front = WorkerProcess(TARGET, redis_url, service="traced").wait_ready()
    leaf = WorkerProcess(TARGET, redis_url, service="traced-leaf").wait_ready()
    yield front, leaf
    front.stop()
    leaf.stop()


@pytest.fixture
async def edge(redis_url):
    server = await EdgeServer(EdgeConfig(redis_url=redis_url, port=0)).start()
    yield server
    await server.stop()


def ids(span) -> tuple[str, str]:
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def by_name(spans: list[dict], name: str, kind: str) -> dict:
    found = [s for s in spans if s["name"] == name and s["kind"] == kind]
    assert len(found) == 1, (name, kind, [(s["name"], s["kind"]) for s in spans])
    return found[0]


async def test_trace_spans_client_edge_worker_and_nested_call(redis_url, workers, edge):
    assert tracing.ENABLED
    EXPORTER.clear()
    tracer = trace.get_tracer("test")
    async with HttpTransport(edge.url, service="traced") as http:
        with tracer.start_as_current_span("caller") as caller:
            answer = await http.call(
                "nested", {"service": "traced-leaf"}, deadline=time.time() + 10
            )
    trace_id, caller_id = ids(caller)
    # The handler and the handler it called both ran under the caller's trace.
    assert answer["mine"]["trace_id"] == trace_id
    assert answer["leaf"]["trace_id"] == trace_id

    here = [span_dict(s) for s in EXPORTER.get_finished_spans()]
    # The HTTP transport's span, child of the caller's.
    (http_call,) = [s for s in here if s["name"] == "traced/nested" and s["parent_id"] == caller_id]
    assert http_call["kind"] == "CLIENT" and http_call["trace_id"] == trace_id
    edge_span = by_name(here, "edge traced/nested", "SERVER")
    assert edge_span["trace_id"] == trace_id
    # Extracted from the HTTP traceparent header.
    assert edge_span["parent_id"] == http_call["span_id"]
    (edge_call,) = [
        s for s in here if s["name"] == "traced/nested" and s["parent_id"] == edge_span["span_id"]
    ]
    assert edge_call["kind"] == "CLIENT"

    async with BrokerClient(redis_url) as client:
        front_spans = await client.call("traced", "spans", timeout=10)
        leaf_spans = await client.call("traced-leaf", "spans", timeout=10)
    served = by_name(front_spans, "traced/nested", "SERVER")
    assert served["trace_id"] == trace_id
    assert served["parent_id"] == edge_call["span_id"]  # from the envelope
    assert served["attributes"] == {
        "rpc.system": "jsonrpc",
        "rpc.service": "traced",
        "rpc.method": "nested",
        "rpc.jsonrpc.request_id": served["attributes"]["rpc.jsonrpc.request_id"],
    }
    assert answer["mine"]["span_id"] == served["span_id"]
    nested_call = by_name(front_spans, "traced-leaf/whoami", "CLIENT")
    assert nested_call["parent_id"] == served["span_id"]
    leaf_served = by_name(leaf_spans, "traced-leaf/whoami", "SERVER")
    assert leaf_served["trace_id"] == trace_id
    assert leaf_served["parent_id"] == nested_call["span_id"]


async def test_websocket_and_redis_callers_carry_their_trace(redis_url, workers, edge):
    tracer = trace.get_tracer("test")
    async with WebSocketTransport(edge.url, service="traced") as ws:
        with tracer.start_as_current_span("ws caller") as caller:
            got = await ws.call("whoami", deadline=time.time() + 10)
    assert got["trace_id"] == ids(caller)[0]
    async with BrokerClient(redis_url) as client:
        with tracer.start_as_current_span("redis caller") as caller:
            got = await client.call("traced", "whoami", timeout=10)
    assert got["trace_id"] == ids(caller)[0]


async def test_error_answers_mark_the_server_span(redis_url, workers):
    tracer = trace.get_tracer("test")
    async with BrokerClient(redis_url) as client:
        with tracer.start_as_current_span("failing caller") as caller:
            with pytest.raises(InternalError):
                await client.call("traced", "fail", timeout=10)
        spans = await client.call("traced", "spans", timeout=10)
    failed = [s for s in spans if s["name"] == "traced/fail" and s["kind"] == "SERVER"]
    assert [s["trace_id"] for s in failed] == [ids(caller)[0]]
    assert failed[0]["attributes"]["rpc.jsonrpc.error_code"] == -32603
    assert failed[0]["status"] == "ERROR"


async def test_plain_http_client_traceparent_is_continued(workers, edge):
    import aiohttp

    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{edge.url}/traced",
            data=b'{"jsonrpc":"2.0","method":"whoami","id":1}',
            headers={"traceparent": parent},
        ) as resp:
            body = await resp.json()
    assert body["result"]["trace_id"] == "0af7651916cd43dd8448eb211c80319c"


async def test_a_process_without_sdk_carries_the_trace_on(redis_url, workers, monkeypatch):
    monkeypatch.setenv("TRACED_API_ONLY", "1")
    middle = WorkerProcess(TARGET, redis_url, service="traced-api").wait_ready()
    try:
        tracer = trace.get_tracer("test")
        async with BrokerClient(redis_url) as client:
            EXPORTER.clear()
            with tracer.start_as_current_span("caller") as caller:
                answer = await client.call(
                    "traced-api", "nested", {"service": "traced-leaf"}, timeout=10
                )
            leaf_spans = await client.call("traced-leaf", "spans", timeout=10)
            assert await client.call("traced-api", "spans", timeout=10) == []
    finally:
        middle.stop()
    trace_id = ids(caller)[0]
    (call_span,) = [
        span_dict(s) for s in EXPORTER.get_finished_spans() if s.name == "traced-api/nested"
    ]
    # The middle process recorded nothing, yet ran under the caller's trace and passed it on.
    assert answer["mine"] == {"trace_id": trace_id, "span_id": call_span["span_id"]}
    (leaf,) = [
        s for s in leaf_spans if s["name"] == "traced-leaf/whoami" and s["trace_id"] == trace_id
    ]
    assert leaf["parent_id"] == call_span["span_id"]
