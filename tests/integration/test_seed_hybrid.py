"""The seed's "Hybrid Graph Pattern" and "State Passing Pattern", as written, against real
services behind real edges (the user's pieces, like `clean_data`, filled in; hosts replaced
by local addresses)."""

from __future__ import annotations

import time

import pytest

from spark.graphs import Graph
from spark.nodes import Node
from spark.nodes.rpc import RpcNode
from spark.nodes.rpc_client import RemoteRpcProxyConfig, RemoteRpcProxyNode
from support.redis_server import free_port

pytestmark = pytest.mark.integration


class ProcessingClusterRpcNode(RpcNode):
    """What runs behind "http://processing-cluster:8000": the default method "process"."""

    async def rpc_process(self, params, context):
        data = params.get("preprocessed_data")
        return {"processed_data": [x * 10 for x in data]}


async def test_hybrid_graph_pattern(memory_url, monkeypatch):
    monkeypatch.setenv("SPARK_REDIS_URL", memory_url)
    port = free_port()
    cluster = ProcessingClusterRpcNode(host="127.0.0.1", port=port)
    await cluster.start_server()
    try:
        # -- the seed, as written (its helpers filled in by the user) ----------------------

        # Local preprocessing
        class LocalPreprocessor(Node):
            """Fast local preprocessing."""

            async def process(self, context):
                data = context.inputs.content.get("raw_data")

                # Quick local processing
                cleaned = self.clean_data(data)
                validated = self.validate_data(cleaned)

                return {"preprocessed_data": validated, "preprocessing_time": 0.05}

            def clean_data(self, data):
                return [x for x in data if x is not None]

            def validate_data(self, data):
                return [x for x in data if isinstance(x, int)]

        # Remote heavy processing
        remote_processor_config = RemoteRpcProxyConfig(
            endpoint=f"http://127.0.0.1:{port}",
            transport="http",
            request_timeout=300.0,  # 5 minutes for heavy work
        )

        remote_processor = RemoteRpcProxyNode(
            config=remote_processor_config, name="RemoteProcessor"
        )

        # Local postprocessing
        class LocalPostprocessor(Node):
            """Fast local postprocessing."""

            async def process(self, context):
                result = context.inputs.content.get("processed_data")

                # Format for output
                formatted = self.format_result(result)

                return {"final_result": formatted}

            def format_result(self, result):
                return ", ".join(str(x) for x in result)

        # Build hybrid graph
        preprocessor = LocalPreprocessor(name="LocalPrep")
        postprocessor = LocalPostprocessor(name="LocalPost")

        preprocessor >> remote_processor >> postprocessor

        graph = Graph(start=preprocessor)

        # -- run it ------------------------------------------------------------------------
        result = await graph.run({"raw_data": [1, None, 2, "x", 3]})
        assert result.content == {"final_result": "10, 20, 30"}
        await remote_processor.aclose()
    finally:
        await cluster.stop_server()


# Service 1: Enriches state
class EnrichmentRpcNode(RpcNode):
    async def rpc_enrich(self, params, context):
        """Enrich data and pass state forward."""
        data = params.get("data")
        state = params.get("state", {})

        # Add enrichment to state
        state["enrichment"] = self.enrich(data)
        state["enriched_at"] = time.time()

        return {
            "data": data,
            "state": state,  # Pass state forward
        }

    def enrich(self, data):
        return {"size": len(data)}


# Service 2: Uses state from previous service
class ProcessingRpcNode(RpcNode):
    async def rpc_process(self, params, context):
        """Process using state from previous service."""
        data = params.get("data")
        state = params.get("state", {})

        # Use enrichment from previous service
        enrichment = state.get("enrichment", {})
        result = self.process(data, enrichment)

        # Update state
        state["processed"] = True
        state["processed_at"] = time.time()

        return {
            "result": result,
            "state": state,  # Continue passing state
        }

    def process(self, data, enrichment):
        return f"{data['text'].upper()} ({enrichment['size']} fields)"


async def test_state_passing_pattern(memory_url, monkeypatch):
    monkeypatch.setenv("SPARK_REDIS_URL", memory_url)
    p1, p2 = free_port(), free_port()
    enrichment = EnrichmentRpcNode(host="127.0.0.1", port=p1)
    processing = ProcessingRpcNode(host="127.0.0.1", port=p2)
    await enrichment.start_server()
    await processing.start_server()
    try:
        # Client graph passes state through chain
        proxy1 = RemoteRpcProxyNode(config=RemoteRpcProxyConfig(endpoint=f"http://127.0.0.1:{p1}"))
        proxy2 = RemoteRpcProxyNode(config=RemoteRpcProxyConfig(endpoint=f"http://127.0.0.1:{p2}"))

        class StatePassingNode(Node):
            async def process(self, context):
                # Initial request with empty state
                return {
                    "method": "enrich",
                    "data": context.inputs.content,
                    "state": {},  # Start with empty state
                }

        state_node = StatePassingNode()
        state_node >> proxy1 >> proxy2

        result = await Graph(start=state_node).run({"text": "hello"})
        assert result.content["result"] == "HELLO (1 fields)"
        assert result.content["state"]["enrichment"] == {"size": 1}
        assert result.content["state"]["processed"] is True
        assert result.content["state"]["processed_at"] >= result.content["state"]["enriched_at"]
        await proxy1.aclose()
        await proxy2.aclose()
    finally:
        await processing.stop_server()
        await enrichment.stop_server()
