"""Customer service: `spark-worker workers.customer:CustomerRpcNode` (service `customer`).

Each customer is a Redis hash `shop:{customer}:customer:<id>` of JSON-encoded fields; an
update writes only the given fields, atomically, and only to a customer that exists.
"""

from __future__ import annotations

import time
from typing import Any

from spark.errors import InvalidParamsError
from workers import catalog
from workers.base import NotFoundError, RedisRpcNode, doc_from_pairs, dumps, loads, require_str

#: Fields `update_customer` may change (the id never changes).
UPDATABLE = frozenset({"name", "email", "tier", "status", "phone", "address", "marketing_opt_in"})


class CustomerStore:
    """The seed's `self.db`: customers in Redis."""

    def __init__(self, node: CustomerRpcNode):
        self.node = node
        self._seeded_on: Any = None

    def _key(self, customer_id: str) -> str:
        return self.node.key("customer", customer_id)

    async def seed(self, reset: bool = False) -> bool:
        rows = catalog.customers()
        keys = [self.node.key("seeded"), *(self._key(c["customer_id"]) for c in rows)]
        args: list[Any] = [catalog.SEED_VERSION, "1" if reset else "0"]
        for row in rows:
            args.append(len(row))
            for field, value in row.items():
                args += [field, dumps(value)]
        done = await self.node.script("seed")(keys=keys, args=args)
        self._seeded_on = self.node.redis_client
        return bool(done)

    async def _ready(self) -> None:
        if self._seeded_on is not self.node.redis_client:
            await self.seed()

    async def get_customer(self, customer_id: str) -> dict[str, Any]:
        await self._ready()
        raw = await self.node.redis_client.hgetall(self._key(customer_id))
        if not raw:
            raise NotFoundError("no such customer", data={"customer_id": customer_id})
        return {k.decode(): loads(v) for k, v in raw.items()}

    async def update_customer(self, customer_id: str, updates: dict[str, Any]) -> dict[str, Any]:
        await self._ready()
        args: list[Any] = []
        for field, value in {**updates, "updated_at": time.time()}.items():
            args += [field, dumps(value)]
        flat = await self.node.script("hset_existing")(keys=[self._key(customer_id)], args=args)
        if not flat:
            raise NotFoundError("no such customer", data={"customer_id": customer_id})
        return doc_from_pairs(flat)


class CustomerRpcNode(RedisRpcNode):
    """Customer management service."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.db = CustomerStore(self)

    async def rpc_get_customer(self, params, context):
        """Get customer information."""
        customer_id = require_str(params, "customer_id", max_len=64)
        return await self.db.get_customer(customer_id)

    async def rpc_update_customer(self, params, context):
        """Update customer information (only the fields in UPDATABLE)."""
        customer_id = require_str(params, "customer_id", max_len=64)
        updates = params.get("updates")
        if not isinstance(updates, dict) or not updates:
            raise InvalidParamsError(
                "updates must be a non-empty object", data={"field": "updates"}
            )
        refused = sorted(str(k) for k in updates if k not in UPDATABLE)
        if refused:
            raise InvalidParamsError(
                "these fields cannot be updated",
                data={"fields": refused, "updatable": sorted(UPDATABLE)},
            )
        return await self.db.update_customer(customer_id, updates)

    async def rpc_seed(self, params, context):
        """Write the seed customers (again, with `reset: true`)."""
        written = await self.db.seed(reset=bool(params.get("reset", False)))
        return {"seeded": written, "customers": catalog.CUSTOMER_COUNT}
