"""Broker URLs to redis-py asyncio clients.

`redis://`, `rediss://` (TLS) and `unix://` go to a real Redis; `memory://[name]` is the
embedded broker: a fakeredis server living in this process, shared by every client that
names it. It is the default when no URL is given and `SPARK_REDIS_URL` is unset, so the
library runs with nothing installed.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, urlencode, urlparse

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from spark.broker.packing import hiredis_packing

ENV_URL = "SPARK_REDIS_URL"
MEMORY_URL = "memory://"
#: What the CLIs use when neither --redis nor SPARK_REDIS_URL is given.
CLI_DEFAULT_URL = "redis://localhost:6379/0"

# Commands share a bounded pool that waits for a free connection instead of raising
# (redis-py's plain pool raises once exhausted, which loses calls under load).
DEFAULT_MAX_CONNECTIONS = 32
POOL_WAIT_SECONDS = 10.0

_memory_servers: dict[str, object] = {}


def resolve_url(url: str | None = None, default: str = MEMORY_URL) -> str:
    """The URL to use: the explicit one, else `$SPARK_REDIS_URL`, else `default`."""
    if url:
        return url
    return os.environ.get(ENV_URL) or default


def is_memory(url: str) -> bool:
    return url.startswith("memory:")


def _memory_server(url: str):
    import fakeredis

    # Not urlparse: a name is free text (test ids hold brackets, which read as IPv6).
    name = url.split(":", 1)[1].lstrip("/").strip() or "default"
    server = _memory_servers.get(name)
    if server is None:
        server = _memory_servers[name] = fakeredis.FakeServer()
    return server


def connect(
    url: str,
    *,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    socket_timeout: float | None = None,
    dedicated: bool = False,
) -> aioredis.Redis:
    """A client with its own bounded, blocking connection pool.

    Give every blocking reader (XREADGROUP BLOCK, BLPOP, pub/sub) a client of its own with
    `max_connections=1`: a blocking command holds its connection for the whole wait.

    `dedicated=True` gives a client that holds one connection for good, skipping the pool
    on every command; only for a single task issuing one command or pipeline at a time
    (a hot path such as the worker's reply writer).
    """
    if is_memory(url):
        from fakeredis import aioredis as fake_aioredis

        return fake_aioredis.FakeRedis(server=_memory_server(url))
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=POOL_WAIT_SECONDS,
        socket_timeout=socket_timeout,
        socket_connect_timeout=5.0,
        health_check_interval=30,
        # One quick retry inside redis-py; the callers own the longer retry policies.
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
    )
    pool.connection_class = hiredis_packing(pool.connection_class)
    client = aioredis.Redis(connection_pool=pool, single_connection_client=dedicated)
    # The pool is this client's alone: close its connections with it (as Redis.from_pool).
    client.auto_close_connection_pool = True
    return client


def describe(url: str) -> str:
    """The URL without its password, for logs and status output."""
    if is_memory(url):
        return url
    parsed = urlparse(url)
    secret_query = any(k.lower() in ("password", "username") for k, _ in parse_qsl(parsed.query))
    if not parsed.password and not secret_query:
        return url
    if parsed.password:
        parsed = parsed._replace(netloc=parsed.netloc.replace(f":{parsed.password}@", ":***@"))
    if secret_query:
        query = [
            (k, "***" if k.lower() in ("password", "username") else v)
            for k, v in parse_qsl(parsed.query, keep_blank_values=True)
        ]
        parsed = parsed._replace(query=urlencode(query, safe="*"))
    return parsed.geturl()
