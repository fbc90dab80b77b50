"""One BrokerClient per event loop and broker URL, shared by every proxy that uses it.

Sharing keeps to one reply reader and one connection pool per process however many
proxies a graph has; reference counts close the client when its last user lets go.
"""

from __future__ import annotations

import asyncio

from spark.broker import resolve_url
from spark.client.broker_client import BrokerClient

_clients: dict[tuple[int, str], tuple[BrokerClient, int]] = {}


def shared_client(url: str | None = None) -> BrokerClient:
    key = (id(asyncio.get_running_loop()), resolve_url(url))
    client, refs = _clients.get(key, (None, 0))
    if client is None or client.closed:
        client, refs = BrokerClient(key[1]), 0
    _clients[key] = (client, refs + 1)
    return client


async def release_client(client: BrokerClient) -> None:
    for key, (held, refs) in list(_clients.items()):
        if held is client:
            if refs > 1:
                _clients[key] = (held, refs - 1)
                return
            del _clients[key]
            break
    await client.aclose()
