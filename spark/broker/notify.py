"""Notifications over Redis pub/sub.

A notification is a JSON-RPC notification object published on the service's channel
(every client of the service) or on one client's channel. Every edge subscribes to all of
them with one pattern subscription and forwards to its WebSocket clients; a client process
subscribes to its own channel.
"""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis

from spark.broker.keys import ServiceKeys, client_channel


def message(method: str, params: Any = None, *, service: str | None = None) -> bytes:
    doc: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        doc["params"] = params
    if service is not None:
        # Outside the JSON-RPC members: tells a subscriber which service spoke.
        doc["service"] = service
    return orjson.dumps(doc)


def channel(service: str, client_id: str | None) -> str:
    return client_channel(client_id) if client_id else ServiceKeys.for_service(service).notify


async def publish(
    redis: aioredis.Redis, service: str, client_id: str | None, method: str, params: Any = None
) -> int:
    """Publish; returns how many subscribers (edges, client processes) received it."""
    return await redis.publish(
        channel(service, client_id), message(method, params, service=service)
    )
