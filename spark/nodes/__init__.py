"""Nodes: the units of work of a graph, and the messages they exchange.

`RpcNode`, `RemoteRpcProxyNode` and `RemoteRpcProxyConfig` are re-exported lazily: their
modules import this package, so importing them here eagerly would be circular.
"""

from __future__ import annotations

import importlib
from typing import Any

from spark.nodes.base import Condition, Edge, EventPublisher, Node
from spark.nodes.types import ExecutionContext, NodeMessage

__all__ = [
    "Condition",
    "Edge",
    "EventPublisher",
    "ExecutionContext",
    "Node",
    "NodeMessage",
    "RemoteRpcProxyConfig",
    "RemoteRpcProxyNode",
    "RpcNode",
]

_LAZY = {
    "RpcNode": "spark.nodes.rpc",
    "RemoteRpcProxyNode": "spark.nodes.rpc_client",
    "RemoteRpcProxyConfig": "spark.nodes.rpc_client",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
