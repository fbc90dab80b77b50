"""Order service: `spark-worker workers.order:OrderRpcNode` (service `order`).

An order is a Redis hash `shop:{order}:order:<id>` of JSON-encoded fields; ids come from
one Redis counter (`ord-000001`, ...), so every replica hands out distinct ids. Creating
an order does not reserve stock: the workflow does that next with the inventory service,
and cancels the order when the reservation fails.
"""

from __future__ import annotations

import time
from typing import Any

from spark.errors import InvalidParamsError
from workers.base import NotFoundError, RedisRpcNode, doc_from_pairs, dumps, loads, require_str
from workers.inventory import parse_items


class OrderSystem:
    """The seed's `self.order_system`: orders in Redis."""

    def __init__(self, node: OrderRpcNode):
        self.node = node

    def _key(self, order_id: str) -> str:
        return self.node.key("order", order_id)

    async def create(self, customer_id: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        lines = []
        for item in items:
            price = item.get("unit_price", 0)
            if isinstance(price, bool) or not isinstance(price, int | float) or price < 0:
                raise InvalidParamsError("unit_price must be a number >= 0", data={"item": item})
            lines.append({"sku": item["sku"], "quantity": item["quantity"], "unit_price": price})
        client = self.node.redis_client
        seq = await client.incr(self.node.key("seq"))
        order = {
            "order_id": f"ord-{seq:06d}",
            "customer_id": customer_id,
            "items": lines,
            "total": round(sum(x["quantity"] * x["unit_price"] for x in lines), 2),
            "status": "created",
            "created_at": time.time(),
        }
        async with client.pipeline(transaction=True) as pipe:
            pipe.hset(self._key(order["order_id"]), mapping={k: dumps(v) for k, v in order.items()})
            pipe.rpush(self.node.key("by-customer", customer_id), order["order_id"])
            await pipe.execute()
        return order

    async def get(self, order_id: str) -> dict[str, Any]:
        raw = await self.node.redis_client.hgetall(self._key(order_id))
        if not raw:
            raise NotFoundError("no such order", data={"order_id": order_id})
        return {k.decode(): loads(v) for k, v in raw.items()}

    async def set_status(self, order_id: str, status: str, **extra: Any) -> dict[str, Any]:
        args: list[Any] = []
        for field, value in {"status": status, **extra, "updated_at": time.time()}.items():
            args += [field, dumps(value)]
        flat = await self.node.script("hset_existing")(keys=[self._key(order_id)], args=args)
        if not flat:
            raise NotFoundError("no such order", data={"order_id": order_id})
        return doc_from_pairs(flat)


class OrderRpcNode(RedisRpcNode):
    """Order management service."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.order_system = OrderSystem(self)

    async def rpc_create_order(self, params, context):
        """Create new order: `customer_id`, `items` [{sku, quantity, unit_price?}]."""
        customer_id = require_str(params, "customer_id", max_len=64)
        items = parse_items(params.get("items"))
        return await self.order_system.create(customer_id, items)

    async def rpc_get_order(self, params, context):
        """Get order details."""
        order_id = require_str(params, "order_id", max_len=64)
        return await self.order_system.get(order_id)

    async def rpc_cancel_order(self, params, context):
        """Mark an order cancelled, with an optional `reason` (repeats are harmless)."""
        order_id = require_str(params, "order_id", max_len=64)
        reason = params.get("reason")
        return await self.order_system.set_status(
            order_id, "cancelled", cancel_reason=str(reason) if reason is not None else None
        )
