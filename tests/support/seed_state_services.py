"""The seed's "Distributed GraphState" services, as written, with the backend chosen by the
environment: SPARK_TEST_STATE=sqlite:<path> or redis:<url>."""

from __future__ import annotations

import os

from spark.graphs.graph_state import GraphState, RedisBackend, SQLiteBackend
from spark.nodes.rpc import RpcNode

_kind, _, _where = os.environ.get("SPARK_TEST_STATE", "sqlite:/tmp/graph_state.db").partition(":")
shared_backend = (
    SQLiteBackend(_where) if _kind == "sqlite" else RedisBackend(_where, namespace="seed")
)


# Service 1
class Service1RpcNode(RpcNode):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.graph_state = GraphState(backend=shared_backend)

    async def rpc_update_state(self, params, context):
        """Update shared graph state."""
        key = params.get("key")
        value = params.get("value")

        await self.graph_state.set(key, value)
        return {"updated": True}


# Service 2
class Service2RpcNode(RpcNode):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.graph_state = GraphState(backend=shared_backend)

    async def rpc_read_state(self, params, context):
        """Read shared graph state."""
        key = params.get("key")
        value = await self.graph_state.get(key)
        return {"value": value}
