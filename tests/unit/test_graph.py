"""Graph runs: chains, inputs and outputs, fan-out, conditions, cycles, errors, events."""

from __future__ import annotations

import asyncio

import pytest

from spark.errors import RpcError, ServiceUnavailableError
from spark.graphs import EventBus, Graph, MaxStepsExceededError
from spark.nodes import Node, NodeMessage
from spark.state import GraphState, MemoryBackend


class Add(Node):
    def __init__(self, amount, **kwargs):
        super().__init__(**kwargs)
        self.amount = amount

    async def process(self, context):
        return {"value": context.inputs.content.get("value", 0) + self.amount}


class Record(Node):
    """Returns a fixed output and remembers every input it got."""

    def __init__(self, output=None, **kwargs):
        super().__init__(**kwargs)
        self.output = output
        self.inputs = []
        self.contexts = []

    async def process(self, context):
        self.inputs.append(context.inputs)
        self.contexts.append(context)
        return self.output


class SyncDouble(Node):
    def process(self, context):
        return {"value": context.inputs.content["value"] * 2}


class Fail(Node):
    def __init__(self, exc, **kwargs):
        super().__init__(**kwargs)
        self.exc = exc

    async def process(self, context):
        raise self.exc


# -- chains, inputs, outputs -----------------------------------------------------


async def test_chain_passes_each_output_to_the_next_node():
    a, b, c = Add(1, name="a"), Add(10, name="b"), Add(100, name="c")
    a >> b >> c
    result = await Graph(start=a).run({"value": 0})
    assert isinstance(result, NodeMessage)
    assert result.content == {"value": 111}


async def test_sync_process_runs_in_a_graph():
    start = Add(1)
    start >> SyncDouble()
    result = await Graph(start=start).run({"value": 2})
    assert result.content == {"value": 6}


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        (None, NodeMessage(content={})),
        ({"k": "v"}, NodeMessage(content={"k": "v"})),
        (NodeMessage(content={"k": "v"}, metadata={"m": 1}), NodeMessage({"k": "v"}, {"m": 1})),
    ],
)
async def test_inputs_forms(inputs, expected):
    node = Record(output={"done": True})
    graph = Graph(start=node)
    result = await (graph.run() if inputs is None else graph.run(inputs))
    assert node.inputs == [expected]
    assert result.content == {"done": True}


async def test_none_output_becomes_empty_dict_for_next_node_and_result():
    first, last = Record(output=None, name="first"), Record(output=None, name="last")
    first >> last
    result = await Graph(start=first).run({"x": 1})
    assert last.inputs == [NodeMessage(content={})]
    assert result == NodeMessage(content={})


async def test_node_message_output_is_passed_as_is():
    out = NodeMessage(content={"a": 1}, metadata={"source": "first"})
    first, second = Record(output=out, name="first"), Record(output={"b": 2}, name="second")
    first >> second
    result = await Graph(start=first).run()
    assert second.inputs == [out]
    assert result.content == {"b": 2}


async def test_single_node_graph_returns_its_message():
    out = NodeMessage(content="text", metadata={"k": 1})
    result = await Graph(start=Record(output=out)).run()
    assert result is out


# -- fan-out ---------------------------------------------------------------------


async def test_fan_out_runs_branches_concurrently_and_collects_leaves():
    b_started, c_started = asyncio.Event(), asyncio.Event()

    class Branch(Node):
        def __init__(self, mine, other, **kwargs):
            super().__init__(**kwargs)
            self.mine, self.other = mine, other

        async def process(self, context):
            # Each branch waits for the other to have started: sequential execution would
            # never get past this (the timeout turns that into a failure, not a hang).
            self.mine.set()
            async with asyncio.timeout(5):
                await self.other.wait()
            return {"branch": self.name, "seen": context.inputs.content["value"]}

    a = Add(0, name="a")
    b = Branch(b_started, c_started, name="b")
    c = Branch(c_started, b_started, name="c")
    a >> [b, c]
    result = await Graph(start=a).run({"value": 1})
    assert result.content == {
        "b": {"branch": "b", "seen": 1},
        "c": {"branch": "c", "seen": 1},
    }


async def test_fan_out_by_separate_edges_and_deeper_leaves():
    a = Record(output={"n": 1}, name="a")
    b, c = Record(output={"b": True}, name="b"), Record(output={"c": True}, name="c")
    d = Record(output={"d": True}, name="d")
    a >> b
    a >> c
    b >> d
    result = await Graph(start=a).run()
    # Leaves are c and d (b took an edge); keys follow graph order, not finishing order.
    assert list(result.content) == ["c", "d"]
    assert result.content == {"c": {"c": True}, "d": {"d": True}}


async def test_fan_out_leaves_with_the_same_name_are_keyed_by_id():
    a = Add(0)
    b, c = Record(output=1, name="same"), Record(output=2, name="same")
    a >> [b, c]
    result = await Graph(start=a).run()
    assert result.content == {f"same:{b.id}": 1, f"same:{c.id}": 2}


async def test_fan_in_runs_the_join_node_once_per_arrival():
    a = Record(output={"from": "a"}, name="a")
    b, c = Record(output={"from": "b"}, name="b"), Record(output={"from": "c"}, name="c")
    d = Record(output={"from": "d"}, name="d")
    a >> [b, c] >> d
    result = await Graph(start=a).run()
    assert sorted(m.content["from"] for m in d.inputs) == ["b", "c"]
    assert result.content == {"from": "d"}


# -- conditional edges -----------------------------------------------------------


async def test_conditional_edge_on_key_value_match():
    start = Record(output={"status": "ok", "n": 1}, name="start")
    ok, bad = Record(output={"went": "ok"}, name="ok"), Record(output={"went": "bad"}, name="bad")
    start.on(status="ok") >> ok
    start.on(status="error") >> bad
    result = await Graph(start=start).run()
    assert result.content == {"went": "ok"}
    assert bad.inputs == []


async def test_conditional_edge_with_callable_predicate():
    def make():
        start = Add(0, name="start")
        big, small = Record(output="big", name="big"), Record(output="small", name="small")
        start.on(lambda out: out["value"] >= 10) >> big
        start.on(lambda out: out["value"] < 10) >> small
        return Graph(start=start)

    assert (await make().run({"value": 50})).content == "big"
    assert (await make().run({"value": 5})).content == "small"


async def test_conditional_and_plain_edges_all_run_when_they_hold():
    start = Record(output={"status": "ok"}, name="start")
    always = Record(output=1, name="always")
    when_ok = Record(output=2, name="when_ok")
    when_bad = Record(output=3, name="when_bad")
    start >> always
    start.on(status="ok") >> when_ok
    start.on(status="bad") >> when_bad
    result = await Graph(start=start).run()
    assert result.content == {"always": 1, "when_ok": 2}
    assert when_bad.inputs == []


async def test_node_whose_conditions_fail_is_the_result():
    start = Record(output={"status": "stop"}, name="start")
    start.on(status="go") >> Record(output="unreached")
    result = await Graph(start=start).run()
    assert result.content == {"status": "stop"}


async def test_target_reached_by_several_holding_edges_runs_once():
    start = Record(output={"a": 1, "b": 2}, name="start")
    target = Record(output="t", name="target")
    start.on(a=1) >> target
    start.on(b=2) >> target
    start >> target
    await Graph(start=start).run()
    assert len(target.inputs) == 1


async def test_error_in_condition_names_the_edge_and_node():
    start = Record(output={"a": 1}, name="start")
    start.on(lambda out: out["missing"]) >> Record(name="target")
    with pytest.raises(KeyError) as info:
        await Graph(start=start, name="g").run()
    notes = "\n".join(info.value.__notes__)
    assert "edge 'start' -> 'target'" in notes
    assert "raised in node 'start' of graph 'g'" in notes


# -- cycles ----------------------------------------------------------------------


async def test_bounded_cycle_runs_until_its_exit_condition():
    class Count(Node):
        async def process(self, context):
            n = context.inputs.content.get("n", 0) + 1
            return {"n": n, "done": n >= 3}

    count = Count(name="count")
    finish = Record(output={"finished": True}, name="finish")
    count.on(done=False) >> count
    count.on(done=True) >> finish
    graph = Graph(start=count)
    result = await graph.run({"n": 0})
    assert result.content == {"finished": True}
    assert finish.inputs == [NodeMessage(content={"n": 3, "done": True})]


async def test_unbounded_cycle_hits_max_steps():
    a, b = Add(1, name="a"), Add(1, name="b")
    a >> b >> a
    with pytest.raises(MaxStepsExceededError, match="max_steps=7") as info:
        await Graph(start=a, max_steps=7, name="loop").run({"value": 0})
    assert "'loop'" in str(info.value)


def test_max_steps_must_be_positive():
    with pytest.raises(ValueError):
        Graph(start=Add(1), max_steps=0)


def test_start_must_be_a_node():
    with pytest.raises(TypeError):
        Graph(start="not a node")


# -- errors ----------------------------------------------------------------------


async def test_error_keeps_its_type_and_names_the_node():
    first = Add(1, name="first")
    first >> Fail(ServiceUnavailableError("analysis down"), name="remote")
    with pytest.raises(ServiceUnavailableError) as info:
        await Graph(start=first, name="pipeline").run()
    assert isinstance(info.value, RpcError)
    assert info.value.message == "analysis down"
    assert any("raised in node 'remote' of graph 'pipeline'" in n for n in info.value.__notes__)


async def test_error_in_one_branch_cancels_the_siblings():
    never = asyncio.Event()
    sibling_cancelled = asyncio.Event()
    sibling_started = asyncio.Event()

    class Waits(Node):
        async def process(self, context):
            sibling_started.set()
            try:
                await never.wait()
            except asyncio.CancelledError:
                sibling_cancelled.set()
                raise

    class FailAfterSibling(Node):
        async def process(self, context):
            await sibling_started.wait()
            raise LookupError("boom")

    start = Add(0)
    start >> [Waits(), FailAfterSibling(name="failing")]
    with pytest.raises(LookupError) as info:
        await Graph(start=start).run()
    assert any("'failing'" in note for note in info.value.__notes__)
    # run() waits for cancelled siblings before it raises.
    assert sibling_cancelled.is_set()


async def test_failed_run_publishes_failure_events():
    start = Fail(ValueError("bad"), name="bad")
    graph = Graph(start=start)
    topics = []
    graph.event_bus.subscribe("*", lambda e: topics.append(e.topic))
    with pytest.raises(ValueError):
        await graph.run()
    assert topics == ["graph.started", "node.started", "node.failed", "graph.failed"]


# -- state, attachment, reuse ----------------------------------------------------


async def test_graph_state_is_on_every_context_and_run_state_is_per_run():
    class Counter(Node):
        async def process(self, context):
            context.state["count"] = context.state.get("count", 0) + 1
            return {"count": context.state["count"]}

    shared = object()  # GraphState is opaque to the graph
    a, b = Counter(name="a"), Counter(name="b")
    a >> b
    graph = Graph(start=a, state=shared)
    assert graph.state is shared
    assert (await graph.run()).content == {"count": 2}
    # A second run starts from a fresh scratch dict.
    assert (await graph.run()).content == {"count": 2}

    probe = Record(output={})
    await Graph(start=probe, state=shared).run()
    ctx = probe.contexts[0]
    assert ctx.graph_state is shared
    assert ctx.node_name == probe.name
    assert ctx.run_id


async def test_graph_state_defaults_to_a_private_memory_state():
    probe = Record(output={})
    graph = Graph(start=probe, initial_state={"n": 1})
    await graph.run()
    assert isinstance(graph.state, GraphState)
    assert probe.contexts[0].graph_state is graph.state
    assert await graph.state.get("n") == 1
    assert Graph(start=probe).state is not graph.state


def test_graph_refuses_state_together_with_initial_state():
    with pytest.raises(TypeError):
        Graph(start=Record(output={}), state=GraphState(), initial_state={"n": 1})


async def test_nodes_are_discovered_and_attached():
    a, b, c = Add(1, name="a"), Add(1, name="b"), Add(1, name="c")
    a >> [b, c]
    c >> a  # a cycle must not make discovery loop
    graph = Graph(start=a)
    assert graph.nodes == [a, b, c]
    for node in (a, b, c):
        assert node.graph is graph
        assert node.event_bus is graph.event_bus


async def test_node_reused_in_two_graphs_sequentially():
    shared = Add(1, name="shared")
    g1 = Graph(start=shared, name="g1")
    first = Add(10, name="first")
    first >> shared
    g2 = Graph(start=first, name="g2")

    assert (await g1.run({"value": 0})).content == {"value": 1}
    assert shared.graph is g1
    assert (await g2.run({"value": 0})).content == {"value": 11}
    assert shared.graph is g2


async def test_explicit_event_bus_is_used():
    bus = EventBus()
    graph = Graph(start=Add(1), event_bus=bus)
    assert graph.event_bus is bus


# -- events ----------------------------------------------------------------------


async def test_lifecycle_events_in_order():
    a, b = Add(1, name="a"), Add(2, name="b")
    a >> b
    graph = Graph(start=a, name="g")
    events = []
    graph.event_bus.subscribe("*", events.append)
    await graph.run({"value": 0})
    assert [(e.topic, e.payload.get("node")) for e in events] == [
        ("graph.started", None),
        ("node.started", "a"),
        ("node.finished", "a"),
        ("node.started", "b"),
        ("node.finished", "b"),
        ("graph.finished", None),
    ]
    assert events[-1].payload["output"] == {"value": 3}
    assert events[-1].payload["steps"] == 2
    assert len({e.payload["run_id"] for e in events}) == 1


async def test_publish_event_from_a_node_reaches_a_graph_subscriber():
    class Notifying(Node):
        async def process(self, context):
            await self.publish_event("remote.rpc.progress", {"pct": 50}, {"job": "j1"})
            return {"ok": True}

    node = Notifying(name="worker")
    graph = Graph(start=node)
    seen = []

    async def handler(event):
        seen.append(event)

    graph.event_bus.subscribe("remote.rpc.*", handler)
    await graph.run()
    (event,) = seen
    assert event.topic == "remote.rpc.progress"
    assert event.payload == {"pct": 50}
    assert event.metadata == {"node": "worker", "node_id": node.id, "job": "j1"}


async def test_failing_subscriber_does_not_fail_the_run():
    graph = Graph(start=Add(1))

    def broken(event):
        raise RuntimeError("subscriber bug")

    graph.event_bus.subscribe("*", broken)
    assert (await graph.run({"value": 1})).content == {"value": 2}


async def test_async_with_graph_closes_its_nodes_and_the_backend_it_was_given():
    closed: list[str] = []

    class Closing(Node):
        async def process(self, context):
            return {}

        async def aclose(self):
            closed.append(self.name)

    class Backend(MemoryBackend):
        async def aclose(self):
            closed.append("backend")
            await super().aclose()

    a, b = Closing(name="a"), Closing(name="b")
    a >> b
    async with Graph(start=a, state_backend=Backend()) as graph:
        await graph.run()
    assert closed == ["a", "b", "backend"]
    closed.clear()
    async with Graph(start=a, state=GraphState(backend=Backend())):
        pass
    assert closed == ["a", "b"]  # a state given whole stays open
