"""The seed document's local patterns, run as written with plain Nodes standing in for proxies.

Code between the `--- seed ---` markers is copied from the seed `rpc-distributed-workflows.md`
(only reformatted by ruff); the user-supplied pieces around it are ours.
"""

from __future__ import annotations

import time

from spark.errors import ServiceUnavailableError
from spark.graphs import Graph
from spark.nodes import ExecutionContext, Node, NodeMessage
from support.seed_patterns import CircuitBreakerProxy, FallbackProxyNode


class ProcessingNode(Node):
    """The seed's (user-supplied) local processing step."""

    async def process(self, context):
        return {"processed": context.inputs.content}


class Stand(Node):
    """A local stand-in for a remote proxy: returns a fixed answer and counts calls."""

    def __init__(self, answer, **kwargs):
        super().__init__(**kwargs)
        self.answer = answer
        self.calls = 0

    async def process(self, context):
        self.calls += 1
        return dict(self.answer)


class Down(Node):
    """A stand-in for a proxy whose service is down."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0

    async def process(self, context):
        self.calls += 1
        raise ServiceUnavailableError(f"{self.name} unavailable")


def ctx(content):
    return ExecutionContext(inputs=NodeMessage(content=content), state={})


# --- seed: Testing Distributed Workflows / Local Testing with Mock Services ---
# Mock RPC service for testing
class MockRpcNode(Node):
    """Mock remote service for local testing."""

    def __init__(self, mock_response, **kwargs):
        super().__init__(**kwargs)
        self.mock_response = mock_response

    async def process(self, context):
        # Return mock response
        return self.mock_response


# Replace remote proxies with mocks
def create_test_graph():
    """Create graph with mock services for testing."""
    local_node = ProcessingNode()

    # Mock instead of remote proxy
    mock_service = MockRpcNode(mock_response={"result": "mocked"}, name="MockRemote")

    local_node >> mock_service

    return Graph(start=local_node)


# Test
async def test_workflow():
    graph = create_test_graph()
    result = await graph.run({"data": "test"})
    assert result.content["result"] == "mocked"


# --- end seed ---


async def test_mock_graph_wiring_is_what_the_seed_says():
    graph = create_test_graph()
    assert [n.name for n in graph.nodes] == ["ProcessingNode", "MockRemote"]


# --- seed: Local-Remote Node Mixing / Smart Routing ---
class SmartRouterNode(Node):
    """Routes to local or remote processing based on load."""

    def __init__(self, local_processor, remote_proxy, **kwargs):
        super().__init__(**kwargs)
        self.local = local_processor
        self.remote = remote_proxy
        self.local_queue_size = 0

    async def process(self, context):
        data_size = len(context.inputs.content.get("data", []))

        # Small data or queue not full -> local
        if data_size < 1000 and self.local_queue_size < 10:
            self.local_queue_size += 1
            try:
                result = await self.local.process(context)
                return {"result": result, "processed_by": "local"}
            finally:
                self.local_queue_size -= 1

        # Large data or local busy -> remote
        else:
            # Call remote service
            remote_result = await self.call_remote_service(context)
            return {"result": remote_result, "processed_by": "remote"}

    async def call_remote_service(self, context):
        """Call remote RPC service."""
        # RemoteRpcProxyNode does this automatically
        # This is just for illustration
        return await self.remote.process(context)


# --- end seed ---


async def test_smart_router_small_data_goes_local():
    local, remote = Stand({"by": "local"}), Stand({"by": "remote"})
    router = SmartRouterNode(local, remote, name="Router")
    result = await Graph(start=router).run({"data": [1, 2, 3]})
    assert result.content == {"result": {"by": "local"}, "processed_by": "local"}
    assert (local.calls, remote.calls) == (1, 0)
    assert router.local_queue_size == 0


async def test_smart_router_large_data_goes_remote():
    local, remote = Stand({"by": "local"}), Stand({"by": "remote"})
    router = SmartRouterNode(local, remote)
    result = await Graph(start=router).run({"data": list(range(1000))})
    assert result.content == {"result": {"by": "remote"}, "processed_by": "remote"}
    assert (local.calls, remote.calls) == (0, 1)


async def test_smart_router_busy_local_goes_remote():
    local, remote = Stand({"by": "local"}), Stand({"by": "remote"})
    router = SmartRouterNode(local, remote)
    router.local_queue_size = 10
    result = await router.process(ctx({"data": []}))
    assert result["processed_by"] == "remote"


async def test_circuit_breaker_passes_results_through():
    breaker = CircuitBreakerProxy(Stand({"success": True, "v": 1}))
    result = await Graph(start=breaker).run({"x": 1})
    assert result.content == {"success": True, "v": 1}


async def test_circuit_breaker_opens_after_threshold_and_closes_after_reset():
    down = Down(name="analysis")
    breaker = CircuitBreakerProxy(down)
    graph = Graph(start=breaker)

    for _ in range(5):
        result = await graph.run({"x": 1})
        assert result.content == {"error": "[-32003] analysis unavailable", "success": False}
    assert breaker.circuit_open is True
    assert down.calls == 5

    # Open: answered without calling the service.
    result = await graph.run({"x": 1})
    assert result.content == {"error": "Circuit breaker open", "success": False}
    assert down.calls == 5

    # Pretend the reset timeout has passed (instead of sleeping 60 s) and swap in a healthy
    # service: the circuit closes and the call goes through.
    breaker.circuit_open_time = time.time() - breaker.reset_timeout - 1
    breaker.proxy = Stand({"success": True})
    result = await graph.run({"x": 1})
    assert result.content == {"success": True}
    assert breaker.circuit_open is False
    assert breaker.failure_count == 0


async def test_fallback_uses_primary_when_healthy():
    node = FallbackProxyNode(Stand({"v": 1}), Stand({"v": 2}))
    result = await Graph(start=node).run()
    assert result.content == {"result": {"v": 1}, "service": "primary"}


async def test_fallback_used_when_primary_fails():
    fallback = Stand({"v": 2})
    node = FallbackProxyNode(Down(name="primary"), fallback)
    result = await Graph(start=node).run()
    assert result.content == {
        "result": {"v": 2},
        "service": "fallback",
        "primary_error": "[-32003] primary unavailable",
    }
    assert fallback.calls == 1


async def test_fallback_reports_both_failures():
    node = FallbackProxyNode(Down(name="primary"), Down(name="backup"))
    result = await Graph(start=node).run()
    assert result.content == {
        "error": "Both services failed",
        "primary_error": "[-32003] primary unavailable",
        "fallback_error": "[-32003] backup unavailable",
        "success": False,
    }


async def test_patterns_compose_in_one_graph():
    # Monolithic shape from the seed, with the breaker and fallback as graph steps.
    prep = ProcessingNode()
    breaker = CircuitBreakerProxy(Down(name="flaky"))
    fallback = FallbackProxyNode(Down(name="primary"), Stand({"report": "ok"}))
    prep >> breaker >> fallback
    result = await Graph(start=prep).run({"data": "x"})
    assert result.content["service"] == "fallback"
    assert result.content["result"] == {"report": "ok"}


# --- seed: Local-Remote Node Mixing / Hybrid Graph Pattern (local classes) ---
# Local preprocessing
class LocalPreprocessor(Node):
    """Fast local preprocessing."""

    async def process(self, context):
        data = context.inputs.content.get("raw_data")

        # Quick local processing
        cleaned = self.clean_data(data)
        validated = self.validate_data(cleaned)

        return {"preprocessed_data": validated, "preprocessing_time": 0.05}


# Local postprocessing
class LocalPostprocessor(Node):
    """Fast local postprocessing."""

    async def process(self, context):
        result = context.inputs.content.get("processed_data")

        # Format for output
        formatted = self.format_result(result)

        return {"final_result": formatted}


# --- end seed ---


class Prep(LocalPreprocessor):
    def clean_data(self, data):
        return [d.strip() for d in data]

    def validate_data(self, data):
        return [d for d in data if d]


class Post(LocalPostprocessor):
    def format_result(self, result):
        return ", ".join(result)


class UpperService(Node):
    """Stands in for the seed's RemoteProcessor proxy."""

    async def process(self, context):
        return {"processed_data": [d.upper() for d in context.inputs.content["preprocessed_data"]]}


async def test_hybrid_graph_with_a_local_stand_in_for_the_remote_processor():
    preprocessor = Prep(name="LocalPrep")
    remote_processor = UpperService(name="RemoteProcessor")
    postprocessor = Post(name="LocalPost")

    preprocessor >> remote_processor >> postprocessor

    graph = Graph(start=preprocessor)
    result = await graph.run({"raw_data": [" a ", "", "b"]})
    assert result.content == {"final_result": "A, B"}
