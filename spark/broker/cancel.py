"""Cancellation: a caller that gives up tells the workers of the service, over pub/sub.

A cancel message goes to the service's channel (`ServiceKeys.cancel`); every worker of the
service subscribes to it (one pub/sub connection per worker) and cancels the handler of each
named request it is running. A message is a JSON-RPC notification, so the reconnecting
`NotificationListener` reads it:

    {"jsonrpc": "2.0", "method": "cancel", "params": {"requests": [[reply_to, id, key], ...]}}

`id` names one request of the client `reply_to` (request ids are unique per client); `key`,
when given, also names every request of that client carrying that idempotency key (the
attempts of one retried call). Either may be null, not both.

Pub/sub keeps nothing: a worker that is reconnecting misses the message, and the request
then runs until its deadline, as it would without cancellation. Workers also remember
cancelled requests for a while, so an entry cancelled before any worker read it is answered
without running.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from spark.broker.connection import is_cluster
from spark.broker.connection import publish as publish_on
from spark.broker.keys import ServiceKeys

METHOD = "cancel"


@dataclass(frozen=True, slots=True)
class CancelItem:
    reply_to: str
    request_id: str | None = None
    idempotency_key: str | None = None

    def to_list(self) -> list[str | None]:
        return [self.reply_to, self.request_id, self.idempotency_key]


def message(items: Iterable[CancelItem]) -> bytes:
    return orjson.dumps(
        {"jsonrpc": "2.0", "method": METHOD, "params": {"requests": [i.to_list() for i in items]}}
    )


def parse(params: Any) -> list[CancelItem]:
    """The items of a cancel message's params; anything malformed is skipped."""
    if not isinstance(params, dict) or not isinstance(params.get("requests"), list):
        return []
    items = []
    for raw in params["requests"]:
        if not isinstance(raw, list) or len(raw) != 3:
            continue
        reply_to, rid, key = raw
        if not isinstance(reply_to, str):
            continue
        if rid is not None and not isinstance(rid, str):
            continue
        if key is not None and not isinstance(key, str):
            continue
        if rid is None and key is None:
            continue
        items.append(CancelItem(reply_to, rid, key))
    return items


async def publish(redis: aioredis.Redis, by_service: Mapping[str, list[CancelItem]]) -> None:
    """One message per service, all in one round trip (one per shard on a cluster)."""
    if is_cluster(redis):
        await asyncio.gather(
            *(
                publish_on(redis, ServiceKeys.for_service(service).cancel, message(items))
                for service, items in by_service.items()
                if items
            )
        )
        return
    pipe = redis.pipeline(transaction=False)
    for service, items in by_service.items():
        if items:
            pipe.publish(ServiceKeys.for_service(service).cancel, message(items))
    await pipe.execute()
