"""A service that reports the trace it runs under, for tracing tests across real processes.

Imported in a `spark-worker` process, it installs the OpenTelemetry SDK with an in-memory
exporter (what an application would do with a real exporter), so `rpc_spans` can hand the
spans this process recorded back to the test; with `TRACED_API_ONLY=1` it does not (a
process with the API alone, which records nothing but must carry the trace on).
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, Sampler, SamplingResult

from spark import tracing
from spark.client.pool import release_client, shared_client
from spark.nodes.rpc import RpcNode


class SwitchableSampler(Sampler):
    """Records every span while `on`; the test process turns it off after its tracing tests,
    so the rest of the session neither keeps spans in memory nor pays for recording them."""

    on = True

    def should_sample(self, parent_context, trace_id, name, *args, **kwargs) -> SamplingResult:
        if not self.on:
            return SamplingResult(Decision.DROP)
        return ALWAYS_ON.should_sample(parent_context, trace_id, name, *args, **kwargs)

    def get_description(self) -> str:
        return "SwitchableSampler"


SAMPLER = SwitchableSampler()
EXPORTER = InMemorySpanExporter()
if not os.environ.get("TRACED_API_ONLY"):
    _provider = TracerProvider(sampler=SAMPLER)
    _provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(_provider)


def span_dict(span) -> dict:
    ctx = span.get_span_context()
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "parent_id": format(span.parent.span_id, "016x") if span.parent else None,
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
    }


class TracedRpcNode(RpcNode):
    async def rpc_whoami(self, params, context):
        ids = tracing.current_ids()
        return {"trace_id": ids[0], "span_id": ids[1]} if ids else None

    async def rpc_nested(self, params, context):
        """Calls `whoami` of the service named in params: a call made inside a handler."""
        client = shared_client(self.runtime.url)
        try:
            leaf = await client.call(params["service"], "whoami", timeout=10)
        finally:
            await release_client(client)
        return {"mine": await self.rpc_whoami({}, context), "leaf": leaf}

    async def rpc_fail(self, params, context):
        raise ValueError("fails on purpose")

    async def rpc_spans(self, params, context):
        return [span_dict(s) for s in EXPORTER.get_finished_spans()]
