"""GraphState and its backends: memory (default), SQLite (one machine), Redis (everywhere).

This layer sits below nodes and graphs (so a node can give its handlers a GraphState) and
uses only the broker for Redis: it never imports spark.nodes or spark.graphs.
"""

from spark.state.backend import StateBackend, StateTransactionHandle
from spark.state.errors import (
    StateClosedError,
    StateConflictError,
    StateConnectionError,
    StateDecodeError,
    StateEncodeError,
    StateError,
    StateLockTimeout,
    StateTypeError,
)
from spark.state.graph_state import GraphState, TransactionContext
from spark.state.memory_backend import MemoryBackend
from spark.state.redis_backend import RedisBackend
from spark.state.sqlite_backend import SQLiteBackend
from spark.state.transaction import StateTransaction

__all__ = [
    "GraphState",
    "MemoryBackend",
    "RedisBackend",
    "SQLiteBackend",
    "StateBackend",
    "StateClosedError",
    "StateConflictError",
    "StateConnectionError",
    "StateDecodeError",
    "StateEncodeError",
    "StateError",
    "StateLockTimeout",
    "StateTransaction",
    "StateTransactionHandle",
    "StateTypeError",
    "TransactionContext",
]
