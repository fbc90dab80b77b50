"""RpcNode dispatch in-process: `dispatch`, `handle_rpc` and local graph use give one answer."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from spark.broker.keys import check_name, default_service_name
from spark.context import CallInfo
from spark.errors import (
    InternalError,
    InvalidParamsError,
    MethodNotFoundError,
    RpcError,
    ServerError,
    UnauthorizedError,
)
from spark.graphs import Graph
from spark.nodes import ExecutionContext, Node, NodeMessage
from spark.nodes.rpc import RpcNode, attribute_for, split_input

SECRET = "secret-detail-hunter2"


def ctx(**kwargs: Any) -> ExecutionContext:
    return ExecutionContext(**kwargs)


def call_info(method: str = "m", **kwargs: Any) -> CallInfo:
    base = {
        "request_id": "r-1",
        "service": "svc",
        "method": method,
        "client_id": "client-1",
        "deadline": time.time() + 30,
    }
    return CallInfo(**{**base, **kwargs})


async def outcome(coro) -> tuple[str, Any]:
    """("ok", result) or ("error", error dict): what a remote caller would see."""
    try:
        result = await coro
    except RpcError as exc:
        return "error", (type(exc), exc.to_dict())
    if isinstance(result, NodeMessage):
        result = result.content
    return "ok", result


class UserRpcNode(RpcNode):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ran: list[str] = []

    async def rpc_user_create(self, params, context):
        self.ran.append("user_create")
        return {"created": params["name"]}

    async def rpc_add(self, a, b, context):
        self.ran.append("add")
        return a + b

    def rpc_sync_echo(self, params, context):
        self.ran.append("sync_echo")
        return {"echo": params, "method": context.metadata["rpc"]["method"]}

    async def rpc_fail(self, params, context):
        self.ran.append("fail")
        raise ValueError(f"database password is {SECRET}")

    async def rpc_type_error_inside(self, params, context):
        self.ran.append("type_error_inside")
        return len(5)  # a TypeError raised by the handler's own code

    async def rpc_reject(self, params, context):
        self.ran.append("reject")
        raise InvalidParamsError("name is required", data={"field": "name", "got": params})

    async def rpc_custom_error(self, params, context):
        raise ServerError("quota exceeded", data={"retry_after": 5}, code=-32050)

    async def rpc_meta(self, params, context):
        return {
            "rpc": context.metadata["rpc"],
            "content": context.inputs.content,
            "node_name": context.node_name,
        }

    async def rpc_nothing(self, params, context):
        return None

    rpc_not_callable = {"looks": "like a handler"}


# -- method names -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "attr"),
    [
        ("create", "rpc_create"),
        ("user.create", "rpc_user_create"),
        ("user-create", "rpc_user_create"),
        ("user_create", "rpc_user_create"),
        ("a.b-c_d", "rpc_a_b_c_d"),
        ("getCustomer", "rpc_getCustomer"),
        ("v2", "rpc_v2"),
        ("a" * 128, "rpc_" + "a" * 128),
    ],
)
def test_attribute_for(method, attr):
    assert attribute_for(method) == attr


@pytest.mark.parametrize(
    "method",
    [
        "",
        "__init__",
        "__class__",
        "_handler",
        "_private",
        "rpc.discover",
        "rpc.",
        "1abc",
        "-x",
        ".x",
        "a b",
        "a/b",
        "a:b",
        "a" * 129,
        None,
        5,
        ["x"],
        b"create",
    ],
)
def test_attribute_for_never_callable(method):
    assert attribute_for(method) is None


async def test_dots_and_dashes_reach_the_same_handler():
    node = UserRpcNode()
    for method in ("user.create", "user-create", "user_create"):
        assert await node.dispatch(method, {"name": method}, ctx()) == {"created": method}
    assert node.ran == ["user_create"] * 3


# -- dispatch ---------------------------------------------------------------------


async def test_dict_params_call_handler_with_params_and_context():
    node = UserRpcNode()
    assert await node.dispatch("user.create", {"name": "ada"}, ctx()) == {"created": "ada"}


async def test_array_params_are_positional_with_context_keyword():
    node = UserRpcNode()
    assert await node.dispatch("add", [2, 3], ctx()) == 5
    assert await node.dispatch("add", ["a", "b"], ctx()) == "ab"


async def test_single_element_array_is_the_params_argument():
    node = UserRpcNode()
    assert await node.dispatch("user.create", [{"name": "ada"}], ctx()) == {"created": "ada"}


async def test_missing_params_are_an_empty_object():
    node = UserRpcNode()
    out = await node.dispatch("sync_echo", None, ctx(metadata={"rpc": {"method": "sync_echo"}}))
    assert out == {"echo": {}, "method": "sync_echo"}


async def test_sync_handlers_work():
    node = UserRpcNode()
    out = await node.dispatch("sync.echo", {"x": 1}, ctx(metadata={"rpc": {"method": "m"}}))
    assert out == {"echo": {"x": 1}, "method": "m"}


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("add", [1]),
        ("add", [1, 2, 3]),
        ("add", []),
        ("add", {"a": 1, "b": 2}),  # dict params: add(params, context) misses b
        ("user.create", []),
        ("user.create", [1, 2]),
    ],
)
async def test_arity_errors_are_invalid_params(method, params):
    node = UserRpcNode()
    with pytest.raises(InvalidParamsError) as info:
        await node.dispatch(method, params, ctx())
    assert info.value.code == -32602
    assert "reason" in info.value.data
    assert node.ran == []


@pytest.mark.parametrize("params", ["text", 5, 1.5, True, ("a", "b")])
async def test_scalar_params_are_invalid_params(params):
    node = UserRpcNode()
    with pytest.raises(InvalidParamsError):
        await node.dispatch("user.create", params, ctx())
    assert node.ran == []


async def test_invalid_params_raised_by_handler_keeps_its_data():
    node = UserRpcNode()
    with pytest.raises(InvalidParamsError) as info:
        await node.dispatch("reject", {"nom": "x"}, ctx())
    assert info.value.message == "name is required"
    assert info.value.data == {"field": "name", "got": {"nom": "x"}}
    assert info.value.to_dict() == {
        "code": -32602,
        "message": "name is required",
        "data": {"field": "name", "got": {"nom": "x"}},
    }


async def test_other_rpc_errors_pass_through_unchanged():
    node = UserRpcNode()
    with pytest.raises(ServerError) as info:
        await node.dispatch("custom.error", {}, ctx())
    assert info.value.to_dict() == {
        "code": -32050,
        "message": "quota exceeded",
        "data": {"retry_after": 5},
    }


async def test_handler_exception_is_internal_error_without_traceback(caplog):
    node = UserRpcNode()
    caplog.set_level(logging.ERROR, logger="spark.rpc")
    with pytest.raises(InternalError) as info:
        await node.dispatch("fail", {}, ctx())
    err = info.value
    assert err.code == -32603
    shown = repr(err.to_dict()) + str(err) + repr(err)
    for leak in (SECRET, "Traceback", "ValueError", "test_rpc_node.py"):
        assert leak not in shown
    assert err.data == {"method": "fail"}
    # The server's log has the whole story.
    records = [r for r in caplog.records if r.name == "spark.rpc"]
    assert records
    assert records[-1].levelno == logging.ERROR
    assert records[-1].exc_info is not None
    assert "Traceback" in caplog.text
    assert SECRET in caplog.text


async def test_type_error_inside_handler_is_internal_not_invalid_params(caplog):
    node = UserRpcNode()
    with pytest.raises(InternalError):
        await node.dispatch("type_error_inside", {}, ctx())
    assert node.ran == ["type_error_inside"]


# -- what must never be callable ----------------------------------------------------

UNREACHABLE_NAMES = [
    "__init__",
    "__class__",
    "__dict__",
    "process_message",
    "process",
    "invoke",
    "stop_server",
    "start_server",
    "dispatch",
    "handle_rpc",
    "_handler",
    "_bind",
    "before_request",
    "after_request",
    "broadcast_notification",
    "rpc.discover",
    "rpc.user_create",
    "not_callable",
    "missing",
    "user.create\n",
    "",
]


@pytest.mark.parametrize("method", UNREACHABLE_NAMES)
async def test_unreachable_via_dispatch(method):
    node = UserRpcNode()
    with pytest.raises(MethodNotFoundError) as info:
        await node.dispatch(method, {}, ctx())
    assert info.value.code == -32601
    assert info.value.data == {"method": method, "available": node.list_methods()}
    assert node.ran == []


@pytest.mark.parametrize("method", UNREACHABLE_NAMES)
async def test_unreachable_via_handle_rpc(method):
    node = UserRpcNode()
    with pytest.raises(MethodNotFoundError):
        await node.handle_rpc(method, {}, call_info(method))
    assert node.ran == []


@pytest.mark.parametrize("method", [m for m in UNREACHABLE_NAMES if m])
async def test_unreachable_via_graph(method):
    node = UserRpcNode()
    with pytest.raises(MethodNotFoundError):
        await Graph(start=node).run({"method": method})
    assert node.ran == []


@pytest.mark.parametrize("method", [None, 5, 1.5, ["user.create"], {"m": 1}, b"user.create"])
async def test_non_string_methods_are_not_found(method):
    node = UserRpcNode()
    with pytest.raises(MethodNotFoundError):
        await node.dispatch(method, {"name": "x"}, ctx())
    with pytest.raises(MethodNotFoundError):
        await node.handle_rpc(method, {"name": "x"}, call_info())
    assert node.ran == []


async def test_framework_helper_rpc_methods_is_not_a_method():
    node = UserRpcNode()
    with pytest.raises(MethodNotFoundError):
        await node.dispatch("methods", {}, ctx())


def test_rpc_methods_lists_only_user_handlers():
    assert RpcNode().list_methods() == []


def test_rpc_methods_lists_handlers():
    names = set(UserRpcNode().list_methods())
    assert {"user_create", "add", "sync_echo", "fail", "reject", "meta"} <= names
    assert "not_callable" not in names


# -- hooks ------------------------------------------------------------------------


class HookedRpcNode(RpcNode):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.calls: list[tuple] = []

    async def before_request(self, method, params, context):
        self.calls.append(("before", method, params))
        if params.get("refuse"):
            raise UnauthorizedError("not you", data={"who": params["refuse"]})
        if params.get("crash_before"):
            raise RuntimeError(SECRET)

    async def after_request(self, method, result, context):
        self.calls.append(("after", method, result))
        if params_replace := result.get("replace_with"):
            return params_replace
        return None

    async def rpc_echo(self, params, context):
        self.calls.append(("handler", params))
        return dict(params)

    async def rpc_fail(self, params, context):
        self.calls.append(("handler", params))
        raise ValueError("nope")


async def test_hooks_run_around_the_handler():
    node = HookedRpcNode()
    assert await node.dispatch("echo", {"a": 1}, ctx()) == {"a": 1}
    assert node.calls == [
        ("before", "echo", {"a": 1}),
        ("handler", {"a": 1}),
        ("after", "echo", {"a": 1}),
    ]


async def test_after_request_replaces_the_result():
    node = HookedRpcNode()
    out = await node.dispatch("echo", {"replace_with": {"replaced": True}}, ctx())
    assert out == {"replaced": True}


async def test_after_request_replacement_is_what_a_graph_sees():
    node = HookedRpcNode()
    out = await Graph(start=node).run({"method": "echo", "replace_with": {"r": 1}})
    assert out.content == {"r": 1}


async def test_before_request_refuses_with_its_error():
    node = HookedRpcNode()
    with pytest.raises(UnauthorizedError) as info:
        await node.dispatch("echo", {"refuse": "mallory"}, ctx())
    assert info.value.data == {"who": "mallory"}
    assert node.calls == [("before", "echo", {"refuse": "mallory"})]


async def test_before_request_crash_is_internal_error_and_refuses(caplog):
    node = HookedRpcNode()
    with pytest.raises(InternalError) as info:
        await node.dispatch("echo", {"crash_before": True}, ctx())
    assert SECRET not in repr(info.value.to_dict())
    assert SECRET in caplog.text
    assert [c[0] for c in node.calls] == ["before"]


async def test_after_request_skipped_when_the_handler_fails():
    node = HookedRpcNode()
    with pytest.raises(InternalError):
        await node.dispatch("fail", {}, ctx())
    assert [c[0] for c in node.calls] == ["before", "handler"]


async def test_hooks_not_run_for_unknown_methods_or_bad_params():
    node = HookedRpcNode()
    with pytest.raises(MethodNotFoundError):
        await node.dispatch("missing", {}, ctx())
    with pytest.raises(InvalidParamsError):
        await node.dispatch("echo", [1, 2, 3], ctx())
    assert node.calls == []


async def test_sync_hooks_work():
    class SyncHooks(RpcNode):
        seen: list

        def before_request(self, method, params, context):
            self.seen = [("before", method)]

        def after_request(self, method, result, context):
            self.seen.append(("after", result))
            return {"wrapped": result}

        def rpc_ping(self, params, context):
            return "pong"

    node = SyncHooks()
    assert await node.dispatch("ping", {}, ctx()) == {"wrapped": "pong"}
    assert node.seen == [("before", "ping"), ("after", "pong")]


# -- handle_rpc -------------------------------------------------------------------


async def test_handle_rpc_builds_the_context_from_the_call():
    node = UserRpcNode(name="users")
    deadline = time.time() + 12
    call = call_info("meta", request_id="abc", client_id="c-9", deadline=deadline, delivery=2)
    out = await node.handle_rpc("meta", {"x": 1}, call)
    assert out["rpc"] == {
        "method": "meta",
        "request_id": "abc",
        "client_id": "c-9",
        "service": "svc",
        "deadline": deadline,
        "delivery": 2,
    }
    assert out["content"] == {"x": 1}
    assert out["node_name"] == "users"


async def test_handle_rpc_graph_state_comes_from_the_runtime():
    sentinel = object()

    class FakeRuntime:
        def __init__(self):
            self.calls = []

        def state_for(self, call):
            self.calls.append(call.state_namespace)
            return sentinel

    class StateNode(RpcNode):
        async def rpc_check(self, params, context):
            return context.graph_state is sentinel

    node = StateNode()
    assert await node.handle_rpc("check", {}, call_info("check")) is False
    node.runtime = FakeRuntime()
    assert await node.handle_rpc("check", {}, call_info("check", state_namespace="ns")) is True
    assert node.runtime.calls == ["ns"]


async def test_handle_rpc_errors_match_dispatch(caplog):
    node = UserRpcNode()
    for method, params in [
        ("fail", {}),
        ("reject", {"a": 1}),
        ("missing", {}),
        ("add", [1]),
        ("user.create", "text"),
    ]:
        local = await outcome(node.dispatch(method, params, ctx()))
        served = await outcome(node.handle_rpc(method, params, call_info(method)))
        assert local == served
        assert local[0] == "error"


# -- a plain Node served as method "process" ---------------------------------------


class Upper(Node):
    async def process(self, context):
        return {"text": str(context.inputs.content.get("text", "")).upper()}


class SyncMessage(Node):
    def process(self, context):
        return NodeMessage(content={"got": context.inputs.content, **context.metadata["rpc"]})


class Broken(Node):
    async def process(self, context):
        raise KeyError(SECRET)


class Refusing(Node):
    async def process(self, context):
        raise InvalidParamsError("text required", data={"field": "text"})


async def test_plain_node_served_as_process():
    assert await Upper().handle_rpc("process", {"text": "hi"}, call_info("process")) == {
        "text": "HI"
    }


async def test_plain_node_process_none_params_is_empty_object():
    assert await Upper().handle_rpc("process", None, call_info("process")) == {"text": ""}


async def test_plain_node_sync_process_and_message_output():
    out = await SyncMessage().handle_rpc(
        "process", {"a": 1}, call_info("process", request_id="q", client_id="cc")
    )
    assert out["got"] == {"a": 1}
    assert out["request_id"] == "q"
    assert out["client_id"] == "cc"
    assert out["method"] == "process"


@pytest.mark.parametrize(
    "method", ["invoke", "handle_rpc", "__init__", "", "rpc.process", "Process", None, 5]
)
async def test_plain_node_only_serves_process(method):
    with pytest.raises(MethodNotFoundError):
        await Upper().handle_rpc(method, {}, call_info())


async def test_plain_node_failure_is_internal_error_logged(caplog):
    caplog.set_level(logging.ERROR, logger="spark.nodes")
    with pytest.raises(InternalError) as info:
        await Broken().handle_rpc("process", {}, call_info("process"))
    assert SECRET not in repr(info.value.to_dict()) + str(info.value)
    assert "Traceback" not in repr(info.value.to_dict())
    assert SECRET in caplog.text
    assert any(r.exc_info for r in caplog.records if r.name == "spark.nodes")


async def test_plain_node_rpc_error_passes_through():
    with pytest.raises(InvalidParamsError) as info:
        await Refusing().handle_rpc("process", {}, call_info("process"))
    assert info.value.data == {"field": "text"}


# -- local graphs -----------------------------------------------------------------


class Prep(Node):
    async def process(self, context):
        return {"method": "user.create", "name": context.inputs.content["who"]}


class Post(Node):
    async def process(self, context):
        return {"post": context.inputs.content}


async def test_graph_start_rpc_node():
    node = UserRpcNode()
    out = await Graph(start=node).run({"method": "user.create", "name": "ada"})
    assert out.content == {"created": "ada"}


async def test_graph_chain_prep_rpc_post():
    node = UserRpcNode()
    prep, post = Prep(), Post()
    prep >> node >> post
    out = await Graph(start=prep).run({"who": "grace"})
    assert out.content == {"post": {"created": "grace"}}


async def test_graph_array_params_and_scalar_result():
    out = await Graph(start=UserRpcNode()).run({"method": "add", "params": [2, 3]})
    assert out.content == 5


async def test_graph_method_from_metadata():
    node = UserRpcNode()
    msg = NodeMessage(content={"name": "ada"}, metadata={"rpc": {"method": "user-create"}})
    assert (await Graph(start=node).run(msg)).content == {"created": "ada"}


async def test_graph_id_is_a_parameter():
    out = await Graph(start=UserRpcNode()).run({"method": "sync_echo", "id": 7, "x": 1})
    assert out.content == {"echo": {"id": 7, "x": 1}, "method": "sync_echo"}


async def test_graph_context_has_local_rpc_metadata_and_run_state():
    class Stateful(RpcNode):
        async def rpc_put(self, params, context):
            context.state["seen"] = params["v"]
            return {"rpc": context.metadata["rpc"], "gs": context.graph_state}

    class Reader(Node):
        async def process(self, context):
            return {**context.inputs.content, "state": dict(context.state)}

    node = Stateful(service="stateful")
    node >> Reader()
    out = await Graph(start=node, state="shared").run({"method": "put", "v": 3})
    assert out.content["rpc"] == {
        "method": "put",
        "request_id": None,
        "client_id": None,
        "service": "stateful",
    }
    assert out.content["gs"] == "shared"
    assert out.content["state"] == {"seen": 3}


async def test_graph_errors_are_the_remote_errors():
    node = UserRpcNode()
    with pytest.raises(InvalidParamsError) as info:
        await Graph(start=node).run({"method": "reject"})
    assert info.value.data == {"field": "name", "got": {}}
    with pytest.raises(InternalError) as info:
        await Graph(start=node).run({"method": "fail"})
    assert SECRET not in repr(info.value.to_dict())


CASES = [
    ("user.create", {"name": "ada"}),
    ("user-create", {"name": "bob"}),
    ("add", [2, 3]),
    ("sync_echo", {"k": [1, 2]}),
    ("nothing", {}),
    ("fail", {}),
    ("reject", {"x": 1}),
    ("custom.error", {}),
    ("add", [1]),
    ("missing", {}),
    ("user.create", "text"),
]


@pytest.mark.parametrize(("method", "params"), CASES)
async def test_three_ways_one_answer(method, params):
    """dispatch, handle_rpc and a local graph agree (a graph turns None into {})."""
    node = UserRpcNode()
    direct = await outcome(node.dispatch(method, params, ctx(metadata={"rpc": {"method": method}})))
    served = await outcome(node.handle_rpc(method, params, call_info(method)))
    graphed = await outcome(Graph(start=node).run({"method": method, "params": params}))
    assert direct == served
    if direct == ("ok", None):
        assert graphed == ("ok", {})
    else:
        assert graphed == direct


# -- split_input ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "metadata", "default", "expected"),
    [
        ({"method": "m", "a": 1}, None, None, ("m", {"a": 1})),
        ({"method": "m", "params": [1, 2]}, None, None, ("m", [1, 2])),
        ({"method": "m", "params": {"x": 1}, "other": 2}, None, None, ("m", {"x": 1})),
        ({"method": "m", "params": None}, None, None, ("m", None)),
        ({"method": "m"}, None, None, ("m", {})),
        ({"a": 1}, {"rpc": {"method": "meta"}}, "dflt", ("meta", {"a": 1})),
        ({"method": "c", "a": 1}, {"rpc": {"method": "meta"}}, "dflt", ("c", {"a": 1})),
        ({"a": 1}, {"rpc": {"id": 3}}, "dflt", ("dflt", {"a": 1})),
        ({"a": 1}, {"rpc": "meta"}, "dflt", ("dflt", {"a": 1})),
        ({"a": 1}, {}, "dflt", ("dflt", {"a": 1})),
        ({"a": 1}, None, None, ("process", {"a": 1})),
        ({"a": 1}, {"rpc": {"method": None}}, None, ("process", {"a": 1})),
        ({"id": 7, "method": "m"}, None, None, ("m", {"id": 7})),
        ({"id": 7}, None, None, ("process", {"id": 7})),
        ({"id": 7, "params": {"id": 8}}, None, None, ("process", {"id": 8})),
        ({}, None, None, ("process", {})),
        ("getData", None, None, ("getData", {})),
        ("text", None, "d", ("d", "text")),
        ("text", {"rpc": {"method": "m"}}, None, ("m", "text")),
        ([1, 2], {"rpc": {"method": "sum"}}, None, ("sum", [1, 2])),
        (None, None, "d", ("d", None)),
    ],
)
def test_split_input(content, metadata, default, expected):
    assert split_input(content, metadata, default) == expected


def test_split_input_does_not_mutate_content():
    content = {"method": "m", "a": 1}
    split_input(content, None, None)
    assert content == {"method": "m", "a": 1}


# -- the seed's services, as written ---------------------------------------------------


class CustomerRpcNode(RpcNode):
    """Customer management service."""

    async def rpc_get_customer(self, params, context):
        """Get customer information."""
        customer_id = params.get("customer_id")
        return await self.db.get_customer(customer_id)

    async def rpc_update_customer(self, params, context):
        """Update customer information."""
        customer_id = params.get("customer_id")
        updates = params.get("updates")
        return await self.db.update_customer(customer_id, updates)


class StatelessProcessingRpcNode(RpcNode):
    """Stateless processing service (horizontally scalable)."""

    async def rpc_process(self, params, context):
        """Process data without maintaining state."""
        # All state comes from params
        data = params.get("data")
        config = params.get("config", {})

        # Pure function - no side effects
        result = self.transform(data, config)

        return {"result": result}

    def transform(self, data, config):
        """Stateless transformation."""
        # Only uses input parameters
        return f"Processed: {data} with {config}"


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

    # The user-supplied piece.
    def enrich(self, data):
        return {"size": len(data)}


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

    # The user-supplied helper: it shadows Node.process and must not break anything.
    def process(self, data, enrichment):
        return {"data": data, "size": enrichment.get("size")}


class StatePassingNode(Node):
    async def process(self, context):
        # Initial request with empty state
        return {
            "method": "enrich",
            "data": context.inputs.content,
            "state": {},  # Start with empty state
        }


class FakeCustomerDb:
    def __init__(self):
        self.rows = {1: {"id": 1, "name": "Ada"}}

    async def get_customer(self, customer_id):
        return self.rows.get(customer_id)

    async def update_customer(self, customer_id, updates):
        self.rows[customer_id] = {**self.rows[customer_id], **updates}
        return self.rows[customer_id]


def customer_node() -> CustomerRpcNode:
    node = CustomerRpcNode()
    node.db = FakeCustomerDb()
    return node


async def test_seed_customer_service_dispatch_and_handle_rpc():
    node = customer_node()
    assert await node.dispatch("get_customer", {"customer_id": 1}, ctx()) == {
        "id": 1,
        "name": "Ada",
    }
    updated = await node.handle_rpc(
        "update.customer",
        {"customer_id": 1, "updates": {"name": "Ada L."}},
        call_info("update.customer"),
    )
    assert updated == {"id": 1, "name": "Ada L."}
    assert await node.dispatch("get-customer", {"customer_id": 1}, ctx()) == updated
    assert {"get_customer", "update_customer"} <= set(node.list_methods())


async def test_seed_customer_service_in_a_graph():
    node = customer_node()
    out = await Graph(start=node).run({"method": "get_customer", "customer_id": 1})
    assert out.content == {"id": 1, "name": "Ada"}


async def test_seed_stateless_processing_default_method_is_process():
    node = StatelessProcessingRpcNode()
    out = await Graph(start=node).run({"data": "x", "config": {"k": 1}})
    assert out.content == {"result": "Processed: x with {'k': 1}"}
    assert await node.dispatch("process", {"data": "y"}, ctx()) == {
        "result": "Processed: y with {}"
    }


async def test_seed_processing_node_helper_named_process_does_not_break_dispatch():
    node = ProcessingRpcNode()
    params = {"data": "abc", "state": {"enrichment": {"size": 3}}}
    out = await node.handle_rpc("process", params, call_info("process"))
    assert out["result"] == {"data": "abc", "size": 3}
    assert out["state"]["processed"] is True
    # The helper is still the user's.
    assert node.process("d", {"size": 1}) == {"data": "d", "size": 1}


async def test_seed_processing_node_in_a_graph():
    node = ProcessingRpcNode()
    out = await Graph(start=node).run({"data": "abc", "state": {"enrichment": {"size": 3}}})
    assert out.content["result"] == {"data": "abc", "size": 3}
    out = await Graph(start=node).run({"method": "process", "data": "z"})
    assert out.content["result"] == {"data": "z", "size": None}


async def test_seed_state_passing_chain_runs_locally():
    state_node = StatePassingNode()
    enrich, process = EnrichmentRpcNode(), ProcessingRpcNode()
    state_node >> enrich >> process
    out = await Graph(start=state_node).run({"raw": 1, "more": 2})
    assert out.content["result"] == {"data": {"raw": 1, "more": 2}, "size": 2}
    state = out.content["state"]
    assert state["enrichment"] == {"size": 2}
    assert state["processed"] is True
    assert state["processed_at"] >= state["enriched_at"]


# -- service names ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("class_name", "service"),
    [
        ("CustomerRpcNode", "customer"),
        ("OrderRpcNode", "order"),
        ("InventoryRpcNode", "inventory"),
        ("DataProcessingRpcNode", "data-processing"),
        ("MLInferenceRpcNode", "ml-inference"),
        ("CacheRpcNode", "cache"),
        ("LoggingRpcNode", "logging"),
        ("AnalyticsRpcNode", "analytics"),
        ("StatelessProcessingRpcNode", "stateless-processing"),
        ("StatefulServiceRpcNode", "stateful-service"),
        ("EnrichmentRpcNode", "enrichment"),
        ("ProcessingRpcNode", "processing"),
        ("Service1RpcNode", "service1"),
        ("Service2RpcNode", "service2"),
        ("MockRpcNode", "mock"),
        ("ProcessingNode", "processing"),
        ("AnalysisNode", "analysis"),
        ("ReportNode", "report"),
        ("LocalPreprocessor", "local-preprocessor"),
        ("LocalPostprocessor", "local-postprocessor"),
        ("SmartRouterNode", "smart-router"),
        ("StatePassingNode", "state-passing"),
        ("CircuitBreakerProxy", "circuit-breaker-proxy"),
        ("FallbackProxyNode", "fallback-proxy"),
        ("TimeoutProxyNode", "timeout-proxy"),
        ("UserService", "user"),
        ("HTTPServerNode", "http-server"),
    ],
)
def test_default_service_names(class_name, service):
    assert default_service_name(class_name) == service
    assert check_name("service name", service) == service


def test_nodes_get_their_default_service_name():
    assert customer_node().service == "customer"
    assert StatelessProcessingRpcNode().service == "stateless-processing"
    assert EnrichmentRpcNode().service == "enrichment"
    assert ProcessingRpcNode().service == "processing"
    assert ProcessingRpcNode(service="proc-2").service == "proc-2"


@pytest.mark.parametrize("class_name", ["_EchoNode", "_Echo"])
def test_default_service_name_is_always_a_valid_name(class_name):
    check_name("service name", default_service_name(class_name))


def test_rpc_node_constructor_options():
    node = CustomerRpcNode(
        host="0.0.0.0", port=9001, name="cust", service="customers", redis_url="memory://x"
    )
    assert (node.host, node.port, node.name, node.service) == ("0.0.0.0", 9001, "cust", "customers")
    assert node.redis_url == "memory://x"
    assert node.runtime is None
