"""WebSocket presence: an edge tells the workers of a service that a client connected or left.

When a WebSocket client of service S connects to an edge (and again when it leaves), the edge
publishes a JSON-RPC notification on the service's channel (`ServiceKeys.sockets`); every
worker of S subscribes to it with the listener it already holds for cancellation, and runs the
node's `on_websocket_connect(client_id, None)` / `on_websocket_disconnect(client_id, None)`:

    {"jsonrpc": "2.0", "method": "websocket.connect", "params": {"client_id": "..."},
     "service": "S"}

Only workers whose node overrides a hook subscribe. An edge publishes from one background
task, in order, pipelined; when a message reached no worker, it skips that service's
announcements for a second (`spark.runtime.edge.core.UNHEARD_SECONDS`), so a service
without hooks costs one PUBLISH a second, not two per connection.

Pub/sub keeps nothing: a worker that starts (or is reconnecting to Redis) after a client
connected does not hear of it (nor, for up to that second, of new ones), and an edge that
dies without closing its sockets sends no "disconnect". The hooks are a live signal, not a
registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from spark.broker import notify
from spark.broker.connection import is_cluster
from spark.broker.connection import publish as publish_on
from spark.broker.keys import ServiceKeys

CONNECT = "websocket.connect"
DISCONNECT = "websocket.disconnect"
METHODS = (CONNECT, DISCONNECT)


#: One announcement: (service, method, client id).
Announcement = tuple[str, str, str]


def _channel_and_body(service: str, method: str, client_id: str) -> tuple[str, bytes]:
    body = notify.message(method, {"client_id": client_id}, service=service)
    return ServiceKeys.for_service(service).sockets, body


async def publish(redis: aioredis.Redis, service: str, method: str, client_id: str) -> int:
    """Tell the workers of `service`; returns how many listeners received it."""
    return await publish_on(redis, *_channel_and_body(service, method, client_id))


async def publish_many(redis: aioredis.Redis, announcements: Sequence[Announcement]) -> list[int]:
    """Publish in order: in one pipeline on one Redis (an edge with many sockets coming and
    going), one by one on a cluster (each channel on its own shard). Returns how many
    listeners received each."""
    if is_cluster(redis):
        return [await publish(redis, *announcement) for announcement in announcements]
    pipe = redis.pipeline(transaction=False)
    for service, method, client_id in announcements:
        pipe.publish(*_channel_and_body(service, method, client_id))
    return [int(n) for n in await pipe.execute()]


def client_id_of(params: Any) -> str | None:
    """The client id of a presence message's params (None when malformed)."""
    client_id = params.get("client_id") if isinstance(params, dict) else None
    return client_id if isinstance(client_id, str) else None
