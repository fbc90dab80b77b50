"""GraphState at the seed's import path; the implementation lives in `spark.state`."""

from spark.state import (
    GraphState,
    MemoryBackend,
    RedisBackend,
    SQLiteBackend,
    StateBackend,
    StateEncodeError,
    StateError,
)

__all__ = [
    "GraphState",
    "MemoryBackend",
    "RedisBackend",
    "SQLiteBackend",
    "StateBackend",
    "StateEncodeError",
    "StateError",
]
