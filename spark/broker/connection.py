"""Broker URLs to redis-py asyncio clients.

`redis://`, `rediss://` (TLS) and `unix://` go to a real Redis; `memory://[name]` is the
embedded broker: a fakeredis server living in this process, shared by every client that
names it. With no URL given and `SPARK_REDIS_URL` unset, library and CLIs alike use a
Redis on localhost:6379 when one answers, else this (saying so once in the log).
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from urllib.parse import parse_qsl, urlencode, urlparse

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from spark.broker.packing import hiredis_packing

ENV_URL = "SPARK_REDIS_URL"
MEMORY_URL = "memory://"
#: The default broker when a Redis answers on it (library and CLIs alike).
CLI_DEFAULT_URL = "redis://localhost:6379/0"

# Commands share a bounded pool that waits for a free connection instead of raising
# (redis-py's plain pool raises once exhausted, which loses calls under load).
DEFAULT_MAX_CONNECTIONS = 32
POOL_WAIT_SECONDS = 10.0

log = logging.getLogger("spark.broker")

_memory_servers: dict[str, object] = {}


def resolve_url(url: str | None = None, default: str | None = None) -> str:
    """The URL to use; one rule for the library and every CLI.

    The explicit one, else `$SPARK_REDIS_URL`, else `default` when given, else a Redis on
    localhost:6379 when one answers there, else the embedded broker (said once in the log:
    only this process sees it, so a worker and a script started apart never meet on it).
    """
    if url:
        return url
    return os.environ.get(ENV_URL) or default or default_url()


@functools.cache
def default_url() -> str:
    """`redis://localhost:6379/0` if a Redis listens there, else `memory://` (checked once)."""
    if _local_redis_listens():
        return CLI_DEFAULT_URL
    log.warning(
        "no broker URL given and $%s unset, and no Redis on localhost:6379: using the "
        "embedded broker %s, which only this process can see",
        ENV_URL,
        MEMORY_URL,
    )
    return MEMORY_URL


def _local_redis_listens() -> bool:
    try:
        with socket.create_connection(("localhost", 6379), timeout=0.2):
            return True
    except OSError:
        return False


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
