"""Spark RPC: distributed JSON-RPC workflows for Python over Redis Streams.

What users write, importable from here: nodes, graphs, state and the error tree.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spark.errors import (
        CancelledError,
        DeadLetteredError,
        InternalError,
        InvalidParamsError,
        InvalidRequestError,
        MethodNotFoundError,
        OverloadedError,
        ParseError,
        RequestTooLargeError,
        RpcConnectionError,
        RpcError,
        RpcTimeoutError,
        ServerError,
        ServiceUnavailableError,
        SparkError,
        TransportError,
        UnauthorizedError,
    )
    from spark.graphs import EventBus, Graph
    from spark.nodes import ExecutionContext, Node, NodeMessage
    from spark.nodes.rpc import JsonRpcError, RpcNode
    from spark.nodes.rpc_client import RemoteRpcProxyConfig, RemoteRpcProxyNode
    from spark.state import GraphState, MemoryBackend, RedisBackend, SQLiteBackend, StateBackend

# Imported on first use, so `import spark.state` (or any lower layer) does not pull in the
# upper ones: the package name stays free of layering.
_LAZY = {
    **dict.fromkeys(
        [
            "CancelledError",
            "DeadLetteredError",
            "InternalError",
            "InvalidParamsError",
            "InvalidRequestError",
            "MethodNotFoundError",
            "OverloadedError",
            "ParseError",
            "RequestTooLargeError",
            "RpcConnectionError",
            "RpcError",
            "RpcTimeoutError",
            "ServerError",
            "ServiceUnavailableError",
            "SparkError",
            "TransportError",
            "UnauthorizedError",
        ],
        "spark.errors",
    ),
    "EventBus": "spark.graphs",
    "Graph": "spark.graphs",
    "ExecutionContext": "spark.nodes",
    "Node": "spark.nodes",
    "NodeMessage": "spark.nodes",
    "JsonRpcError": "spark.nodes.rpc",
    "RpcNode": "spark.nodes.rpc",
    "RemoteRpcProxyConfig": "spark.nodes.rpc_client",
    "RemoteRpcProxyNode": "spark.nodes.rpc_client",
    **dict.fromkeys(
        ["GraphState", "MemoryBackend", "RedisBackend", "SQLiteBackend", "StateBackend"],
        "spark.state",
    ),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


try:
    __version__ = version("spark-rpc")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "CancelledError",
    "DeadLetteredError",
    "EventBus",
    "ExecutionContext",
    "Graph",
    "GraphState",
    "InternalError",
    "InvalidParamsError",
    "InvalidRequestError",
    "JsonRpcError",
    "MemoryBackend",
    "MethodNotFoundError",
    "Node",
    "NodeMessage",
    "OverloadedError",
    "ParseError",
    "RedisBackend",
    "RemoteRpcProxyConfig",
    "RemoteRpcProxyNode",
    "RequestTooLargeError",
    "RpcConnectionError",
    "RpcError",
    "RpcNode",
    "RpcTimeoutError",
    "SQLiteBackend",
    "ServerError",
    "ServiceUnavailableError",
    "SparkError",
    "StateBackend",
    "TransportError",
    "UnauthorizedError",
    "__version__",
]
