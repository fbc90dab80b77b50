"""Inventory service: `spark-worker workers.inventory:InventoryRpcNode` (service `inventory`).

Stock is a Redis hash `shop:{inventory}:stock` (sku -> units available). A reservation
takes every item of an order or none, in one Lua script (`lua/reserve.lua`), so any number
of replicas reserving at once never oversell and never take stock twice for one order:
a repeat of `reserve_inventory` for the same order id answers with the first reservation.
`release_inventory` gives an order's stock back (the order workflow's compensation).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from spark.errors import InvalidParamsError
from workers import catalog
from workers.base import (
    ConflictError,
    NotFoundError,
    OutOfStockError,
    RedisRpcNode,
    dumps,
    loads,
    require_int,
    require_str,
)

MAX_ITEMS = 100


def parse_items(items: Any) -> list[dict[str, Any]]:
    """`[{"sku": str, "quantity": int >= 1}, ...]`, checked; other keys are kept."""
    if not isinstance(items, list) or not items or len(items) > MAX_ITEMS:
        raise InvalidParamsError(
            f"items must be a list of 1 to {MAX_ITEMS} objects", data={"field": "items"}
        )
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidParamsError("each item must be an object", data={"item": i})
        try:
            sku = require_str(item, "sku", max_len=64)
            quantity = require_int(item, "quantity", default=1)
        except InvalidParamsError as exc:
            exc.data = {**(exc.data or {}), "item": i}
            raise
        out.append({**item, "sku": sku, "quantity": quantity})
    return out


def totals(items: list[dict[str, Any]]) -> dict[str, int]:
    """Units per sku (an order may name a sku twice)."""
    counts: Counter[str] = Counter()
    for item in items:
        counts[item["sku"]] += item["quantity"]
    return dict(counts)


class InventoryStore:
    """The seed's `self.inventory`: stock and reservations in Redis."""

    def __init__(self, node: InventoryRpcNode):
        self.node = node
        self._seeded_on: Any = None

    @property
    def stock_key(self) -> str:
        return self.node.key("stock")

    @property
    def reservations_key(self) -> str:
        return self.node.key("reservations")

    @property
    def keys(self) -> list[str]:
        """What the reserve and release scripts touch."""
        return [self.stock_key, self.reservations_key, self.node.key("reserved")]

    async def seed(self, reset: bool = False) -> bool:
        node = self.node
        keys = [node.key("seeded"), self.stock_key, node.key("catalog"), *self.keys[1:]]
        args: list[Any] = [catalog.SEED_VERSION, "1" if reset else "0", len(catalog.PRODUCTS)]
        for sku, (_name, _price, stock) in catalog.PRODUCTS.items():
            args += [sku, stock]
        args.append(len(catalog.PRODUCTS))
        for sku, (name, price, _stock) in catalog.PRODUCTS.items():
            args += [sku, dumps({"name": name, "price": price})]
        args += [0, 0]  # reservations and reserved units: emptied on reset
        done = await node.script("seed")(keys=keys, args=args)
        self._seeded_on = node.redis_client
        return bool(done)

    async def _ready(self) -> None:
        if self._seeded_on is not self.node.redis_client:
            await self.seed()

    async def check_available(self, wanted: dict[str, int]) -> list[dict[str, Any]]:
        await self._ready()
        skus = list(wanted)
        client = self.node.redis_client
        async with client.pipeline(transaction=False) as pipe:
            pipe.hmget(self.stock_key, skus)
            pipe.hmget(self.node.key("catalog"), skus)
            stock, info = await pipe.execute()
        out = []
        for sku, have, doc in zip(skus, stock, info, strict=True):
            if have is None:
                raise NotFoundError("unknown sku", data={"sku": sku})
            available = int(have)
            product = loads(doc) or {}
            out.append(
                {
                    "sku": sku,
                    "name": product.get("name"),
                    "unit_price": product.get("price"),
                    "quantity": wanted[sku],
                    "available": available,
                    "in_stock": available >= wanted[sku],
                }
            )
        return out

    async def reserve(self, order_id: str, items: list[dict[str, Any]]) -> dict[str, Any]:
        await self._ready()
        wanted = totals(items)
        lines = [{"sku": sku, "quantity": q} for sku, q in wanted.items()]
        doc = {"order_id": order_id, "items": lines, "reserved_at": time.time()}
        args: list[Any] = [order_id, dumps(doc)]
        for sku, quantity in wanted.items():
            args += [sku, quantity]
        answer = await self.node.script("reserve")(keys=self.keys, args=args)
        status = answer[0].decode()
        if status == "ok":
            return {**doc, "status": "reserved", "duplicate": False}
        if status == "duplicate":
            stored = loads(answer[1])
            if stored.get("released"):
                raise ConflictError(
                    "this order's reservation was released; use a new order",
                    data={"order_id": order_id},
                )
            if totals(stored["items"]) != wanted:
                raise ConflictError(
                    "this order already holds a different reservation",
                    data={"order_id": order_id, "reserved": stored["items"]},
                )
            return {**stored, "status": "reserved", "duplicate": True}
        sku = answer[1].decode()
        if status == "unknown":
            raise NotFoundError("unknown sku", data={"sku": sku, "order_id": order_id})
        raise OutOfStockError(
            f"insufficient stock for {sku}",
            data={
                "reason": "out_of_stock",
                "order_id": order_id,
                "sku": sku,
                "requested": wanted[sku],
                "available": int(answer[2]),
            },
        )

    async def release(self, order_id: str) -> dict[str, Any]:
        await self._ready()
        answer = await self.node.script("release")(keys=self.keys, args=[order_id])
        if answer[0] == b"none":
            return {"order_id": order_id, "released": False, "items": []}
        doc = loads(answer[1])
        return {
            "order_id": order_id,
            "released": answer[0] == b"released",
            "items": doc["items"],
        }

    async def stock(self) -> dict[str, Any]:
        await self._ready()
        client = self.node.redis_client
        async with client.pipeline(transaction=True) as pipe:
            pipe.hgetall(self.stock_key)
            pipe.hgetall(self.node.key("reserved"))
            stock, reserved = await pipe.execute()
        return {
            "stock": {k.decode(): int(v) for k, v in stock.items()},
            "reserved": {k.decode(): int(v) for k, v in reserved.items()},
        }


class InventoryRpcNode(RedisRpcNode):
    """Inventory management service."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.inventory = InventoryStore(self)

    async def rpc_check_availability(self, params, context):
        """Check product availability: `sku` (+ `quantity`, default 1), or `items`.

        One sku answers `{sku, quantity, available, in_stock, ...}`; `items` answers
        `{in_stock, items: [...]}` (in_stock when every item is).
        """
        if isinstance(params, dict) and "items" in params:
            lines = await self.inventory.check_available(totals(parse_items(params["items"])))
            return {"in_stock": all(line["in_stock"] for line in lines), "items": lines}
        sku = require_str(params, "sku", max_len=64)
        quantity = require_int(params, "quantity", default=1)
        (line,) = await self.inventory.check_available({sku: quantity})
        return line

    async def rpc_reserve_inventory(self, params, context):
        """Reserve inventory for order (all items or none; once per order id)."""
        order_id = require_str(params, "order_id", max_len=64)
        items = parse_items(params.get("items"))
        return await self.inventory.reserve(order_id, items)

    async def rpc_release_inventory(self, params, context):
        """Give back what an order reserved (no-op when it holds nothing)."""
        return await self.inventory.release(require_str(params, "order_id", max_len=64))

    async def rpc_get_stock(self, params, context):
        """Units available and units held by reservations, per sku."""
        return await self.inventory.stock()

    async def rpc_seed(self, params, context):
        """Write the seed catalog (again, with `reset: true`: full stock, no reservations)."""
        reset = bool(params.get("reset", False)) if isinstance(params, dict) else False
        written = await self.inventory.seed(reset=reset)
        return {"seeded": written, "products": len(catalog.PRODUCTS)}
