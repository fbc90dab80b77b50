"""The typed Protocols between the runtime and what it serves (no duck typing by name)."""

from __future__ import annotations

import pytest

from spark.nodes.base import Node
from spark.nodes.rpc import RpcNode
from spark.runtime.host import (
    HostAware,
    Servable,
    ServiceAware,
    bind,
    call_on_start,
    call_on_stop,
)
from spark.runtime.server import NodeServer, ServedNode
from spark.runtime.worker import service_of


class Bare:
    """Servable and nothing else: no runtime, no service, no hooks."""

    async def handle_rpc(self, method, params, call):
        return None


class Hooked(Bare):
    def __init__(self):
        self.calls = []

    def on_start(self):  # a plain function is a hook too
        self.calls.append("start")

    async def on_stop(self):
        self.calls.append("stop")


def test_an_rpc_node_is_every_kind_of_served_target():
    node = RpcNode(port=0)
    for protocol in (Servable, HostAware, ServiceAware, ServedNode):
        assert isinstance(node, protocol), protocol


def test_bind_gives_only_what_the_target_declares():
    node, bare = RpcNode(port=0, service="a"), Bare()
    bind(node, "host", "b")
    bind(bare, "host", "b")
    assert (node.runtime, node.service) == ("host", "b")
    assert not hasattr(bare, "runtime") and not hasattr(bare, "service")
    assert service_of(bare) == "bare" and service_of(node) == "b"
    assert service_of(node, "c") == "c"


async def test_hooks_run_when_the_target_has_them():
    hooked = Hooked()
    await call_on_start(hooked)
    await call_on_stop(hooked)
    await call_on_start(Bare())  # none: nothing to do
    assert hooked.calls == ["start", "stop"]


def test_start_server_needs_a_node_with_an_address():
    with pytest.raises(TypeError, match="Bare cannot be served"):
        NodeServer(Bare())
    assert not isinstance(Node(), ServedNode)
