"""Node construction, process dispatch, event publishing and wiring (no graph run)."""

from __future__ import annotations

import pytest

import spark.nodes
from spark.graphs import EventBus
from spark.nodes import Condition, ExecutionContext, Node, NodeMessage


class Echo(Node):
    async def process(self, context):
        return {"echo": context.inputs.content}


class SyncEcho(Node):
    def process(self, context):
        return {"sync": context.inputs.content}


class Scaled(Node):
    def __init__(self, factor, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    async def process(self, context):
        return {"value": context.inputs.content["value"] * self.factor}


# -- messages and contexts -------------------------------------------------------


def test_node_message_defaults():
    msg = NodeMessage()
    assert msg.content is None
    assert msg.metadata == {}
    assert NodeMessage(content=1, metadata=None).metadata == {}
    # Each message gets its own metadata dict.
    assert NodeMessage().metadata is not NodeMessage().metadata


def test_node_message_coerce():
    kept = NodeMessage(content={"a": 1}, metadata={"m": 2})
    assert NodeMessage.coerce(kept) is kept
    assert NodeMessage.coerce(None) == NodeMessage(content={})
    assert NodeMessage.coerce({"a": 1}) == NodeMessage(content={"a": 1})
    assert NodeMessage.coerce("text") == NodeMessage(content="text")


def test_execution_context_defaults():
    ctx = ExecutionContext()
    assert ctx.inputs == NodeMessage(content={})
    assert ctx.state == {}
    assert ctx.graph_state is None
    assert ctx.metadata == {}
    assert ctx.node_name is None
    assert ctx.run_id is None


def test_execution_context_as_the_seed_builds_it():
    context = ExecutionContext(
        inputs=NodeMessage(content={"method": "test", "data": "value"}), state={}
    )
    assert context.inputs.content["method"] == "test"
    assert context.state == {}


# -- construction ----------------------------------------------------------------


def test_name_defaults_to_class_name_and_ids_are_unique():
    a, b = Echo(), Echo()
    assert a.name == "Echo"
    assert a.id != b.id
    assert Echo(name="custom", id="n1").name == "custom"
    assert Echo(name="custom", id="n1").id == "n1"


def test_unknown_keywords_are_rejected_with_the_closest_name():
    assert Echo(name="x", description="echoes").description == "echoes"
    with pytest.raises(TypeError, match=r"'descripton'.*did you mean 'description'"):
        Echo(descripton="echoes")
    with pytest.raises(TypeError, match="'retries'"):
        Echo(retries=3)


def test_unknown_keywords_of_rpc_and_proxy_nodes_are_rejected():
    from spark.nodes.rpc import RpcNode
    from spark.nodes.rpc_client import RemoteRpcProxyNode

    with pytest.raises(TypeError, match="did you mean 'config'"):
        RemoteRpcProxyNode(confg=None)
    with pytest.raises(TypeError, match="did you mean 'expose_errors'"):
        RpcNode(expose_error=True)


def test_subclass_with_own_positional_argument():
    node = Scaled(3, name="triple")
    assert node.factor == 3
    assert node.name == "triple"


async def test_async_and_sync_process_called_directly():
    ctx = ExecutionContext(inputs=NodeMessage(content={"value": 2}))
    assert await Echo().process(ctx) == {"echo": {"value": 2}}
    assert SyncEcho().process(ctx) == {"sync": {"value": 2}}
    assert await Scaled(5).process(ctx) == {"value": 10}


async def test_invoke_handles_sync_and_async_process():
    ctx = ExecutionContext(inputs=NodeMessage(content=1))
    assert await SyncEcho().invoke(ctx) == {"sync": 1}
    assert await Echo().invoke(ctx) == {"echo": 1}


async def test_base_process_must_be_overridden():
    with pytest.raises(NotImplementedError, match="Node must override process"):
        await Node().process(ExecutionContext())


# -- events ----------------------------------------------------------------------


async def test_publish_event_without_bus_is_a_noop():
    node = Echo()
    assert node.graph is None
    assert node.event_bus is None
    await node.publish_event("custom.topic", {"x": 1})


async def test_publish_event_on_an_explicit_bus_adds_source():
    bus = EventBus()
    seen = []
    bus.subscribe("custom.*", seen.append)
    node = Echo(name="src")
    node.event_bus = bus
    await node.publish_event("custom.topic", {"x": 1}, {"trace": "t1"})
    assert [(e.topic, e.payload) for e in seen] == [("custom.topic", {"x": 1})]
    assert seen[0].metadata == {"node": "src", "node_id": node.id, "trace": "t1"}


# -- wiring ----------------------------------------------------------------------


def test_rshift_returns_right_hand_side_so_chains_continue():
    a, b, c = Echo(name="a"), Echo(name="b"), Echo(name="c")
    assert (a >> b) is b
    assert (b >> c) is c
    assert a.successors == [b]
    assert b.successors == [c]
    assert c.successors == []


def test_fan_out_with_a_list_and_fan_in_from_a_list():
    a, b, c, d = (Echo(name=n) for n in "abcd")
    targets = [b, c]
    assert (a >> targets) is targets
    assert ([b, c] >> d) is d
    assert a.successors == [b, c]
    assert b.successors == [d]
    assert c.successors == [d]


def test_chained_fan_out_then_fan_in():
    a, b, c, d = (Echo(name=n) for n in "abcd")
    a >> [b, c] >> d
    assert a.successors == [b, c]
    assert b.successors == c.successors == [d]


def test_repeated_plain_edge_is_wired_once():
    a, b = Echo(), Echo()
    a >> b
    a >> b
    assert len(a.edges) == 1


def test_conditional_edges():
    a, b, c = Echo(name="a"), Echo(name="b"), Echo(name="c")
    assert (a.on(status="ok") >> b) is b
    a.on(lambda out: out.get("n", 0) > 1) >> c
    first, second = a.edges
    assert first.target is b and second.target is c
    assert first.holds({"status": "ok", "other": 1})
    assert not first.holds({"status": "bad"})
    assert not first.holds({})
    assert not first.holds("status=ok")  # key=value needs a mapping
    assert second.holds({"n": 2})
    assert not second.holds({"n": 1})


def test_condition_combines_predicate_and_matches():
    cond = Condition(lambda out: out["n"] > 1, {"status": "ok"})
    assert cond({"status": "ok", "n": 2})
    assert not cond({"status": "ok", "n": 1})
    assert not cond({"status": "no", "n": 2})


def test_condition_needs_something_to_check():
    with pytest.raises(ValueError):
        Echo().on()
    with pytest.raises(TypeError):
        Echo().on("not callable")


def test_rshift_rejects_non_nodes():
    with pytest.raises(TypeError):
        Echo() >> 42
    with pytest.raises(TypeError):
        Echo() >> []


def test_unknown_attribute_of_the_package_raises_attribute_error():
    with pytest.raises(AttributeError):
        _ = spark.nodes.NoSuchThing
