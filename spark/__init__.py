"""Spark RPC: distributed JSON-RPC workflows for Python over Redis Streams.

What users write, importable from here: nodes, graphs, state and the error tree.
"""

from importlib.metadata import PackageNotFoundError, version

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
