"""Broker URLs to redis-py asyncio clients: the one place that knows how to connect.

- `redis://`, `rediss://` (TLS) and `unix://`: one Redis.
- `redis+cluster://[user:pass@]host:port[,host:port...]` and `rediss+cluster://`: a Redis
  Cluster, found from any of the seed nodes (`redis.asyncio.cluster.RedisCluster`).
- `redis+sentinel://[user:pass@]host:port[,host:port...]/service_name[/db]`: the primary
  that Sentinel names for `service_name` (`redis.asyncio.sentinel`); the password is the
  primary's (add `?sentinel_password=...` when the sentinels have their own).
- `memory://[name]`: the embedded broker (the `embedded` extra), a fakeredis server living
  in this process, shared by every client that names it.

With no URL given and `SPARK_REDIS_URL` unset, library and CLIs alike use a Redis on
localhost:6379 when one answers, else the embedded broker (saying so once in the log).

Everything above the broker layer gets a client with the same commands whatever the URL;
the few commands that differ on a cluster (sharded pub/sub, scanning every primary) go
through the helpers at the end of this module.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlparse

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff, ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException

from spark.broker.packing import hiredis_packing

ENV_URL = "SPARK_REDIS_URL"
MEMORY_URL = "memory://"
#: The default broker when a Redis answers on it (library and CLIs alike).
CLI_DEFAULT_URL = "redis://localhost:6379/0"

# Commands share a bounded pool that waits for a free connection instead of raising
# (redis-py's plain pool raises once exhausted, which loses calls under load).
DEFAULT_MAX_CONNECTIONS = 32
POOL_WAIT_SECONDS = 10.0

#: Connections per cluster node for one client. redis-py's cluster pools raise once full
#: rather than wait, so they get room; connections are only opened as needed.
CLUSTER_MAX_CONNECTIONS = 256
#: Attempts of one command while a cluster fails over (a replica takes a dead primary's
#: slots after `cluster-node-timeout`); the callers' own retry policies come on top.
CLUSTER_ATTEMPTS = 6

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")

#: Every URL scheme `connect` understands.
BROKER_SCHEMES = ("redis", "rediss", "unix", "memory", *CLUSTER_SCHEMES, *SENTINEL_SCHEMES)

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


def is_broker_url(url: str) -> bool:
    """Whether `url` names a broker (as opposed to an edge's http(s):// or ws(s):// URL)."""
    return url.split(":", 1)[0].lower() in BROKER_SCHEMES and ":" in url


def is_memory(url: str) -> bool:
    return url.startswith("memory:")


def _memory_server(url: str):
    try:
        import fakeredis
    except ImportError:
        raise RuntimeError(
            f"{url} is the embedded broker, which needs `pip install 'spark-rpc[embedded]'`; "
            "or give a Redis URL (--redis, $SPARK_REDIS_URL)"
        ) from None

    # Not urlparse: a name is free text (test ids hold brackets, which read as IPv6).
    name = url.split(":", 1)[1].lstrip("/").strip() or "default"
    server = _memory_servers.get(name)
    if server is None:
        server = _memory_servers[name] = fakeredis.FakeServer()
    return server


@dataclass(frozen=True, slots=True)
class MultiHostUrl:
    """A cluster or sentinel URL: several `host:port` seeds, credentials, options."""

    scheme: str
    hosts: list[tuple[str, int]]
    username: str | None = None
    password: str | None = None
    #: Path segments: `service_name` and `db` for sentinel; nothing (or `0`) for a cluster.
    path: list[str] = field(default_factory=list)
    query: dict[str, str] = field(default_factory=dict)

    @property
    def tls(self) -> bool:
        return self.scheme.startswith("rediss")


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def is_sentinel_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in SENTINEL_SCHEMES


def parse_multi_host(url: str) -> MultiHostUrl:
    """Split `scheme://[user:pass@]h:p[,h:p...][/path][?query]` (urlparse takes one host)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"not a broker URL: {describe(url)!r}")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    hosts = []
    for item in hostlist.split(","):
        item = item.strip()
        if not item:
            continue
        host, colon, port = item.rpartition(":")
        if not colon:
            host, port = item, "6379"
        try:
            hosts.append((host.strip("[]") or "localhost", int(port)))
        except ValueError:
            raise ValueError(f"bad host:port {item!r} in {describe(url)!r}") from None
    if not hosts:
        raise ValueError(f"no host in broker URL {describe(url)!r}")
    return MultiHostUrl(
        scheme=scheme.lower(),
        hosts=hosts,
        username=username,
        password=password,
        path=[unquote(p) for p in path.split("/") if p],
        query=dict(parse_qsl(query)),
    )


def _tls_options(query: dict[str, str]) -> dict:
    options: dict = {}
    for name in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs"):
        if name in query:
            options[name] = query[name]
    if "ssl_check_hostname" in query:
        options["ssl_check_hostname"] = query["ssl_check_hostname"].lower() in ("1", "true", "yes")
    return options


class ClusterClient(RedisCluster):
    """RedisCluster that learns the slot map before its first command.

    redis-py routes a command sent before the client knows any node to a random node: many
    concurrent first commands then meet a storm of MOVED replies, whose topology refreshes
    drop connections with commands in flight, which redis-py retries: measured here, 200
    concurrent first EVALSHA increments counted up to 229.
    """

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if self._initialize:  # redis-py's own "slot map unknown" flag
            await self.initialize()
        return await super().execute_command(*args, **kwargs)

    async def initialize(self, *args: Any, **kwargs: Any) -> ClusterClient:
        # No seed reachable, or the slots not all served yet (a failover under way): to the
        # callers that is Redis being unreachable, which their loops wait out.
        try:
            await super().initialize(*args, **kwargs)
        except RedisClusterException as exc:
            if type(exc) is not RedisClusterException:
                raise
            raise RedisConnectionError(str(exc)) from exc
        return self


def _connect_cluster(url: str, max_connections: int, socket_timeout: float | None):
    target = parse_multi_host(url)
    if target.path and target.path != ["0"]:
        raise ValueError("a Redis Cluster has database 0 only")
    kwargs: dict = {}
    if target.tls:
        kwargs = {"ssl": True, **_tls_options(target.query)}
    return ClusterClient(
        startup_nodes=[ClusterNode(h, p) for h, p in target.hosts],
        username=target.username,
        password=target.password,
        max_connections=max(max_connections, CLUSTER_MAX_CONNECTIONS),
        socket_timeout=socket_timeout,
        socket_connect_timeout=2.0,
        # MOVED/ASK are followed inside redis-py; connection errors and CLUSTERDOWN while a
        # replica is promoted are retried, then surface as errors the callers' loops retry.
        retry=Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.05), CLUSTER_ATTEMPTS),
        **kwargs,
    )


class SentinelRedis(aioredis.Redis):
    """The primary's client; closing it also closes the connections to the sentinels."""

    sentinel: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        sentinel, self.sentinel = self.sentinel, None
        if sentinel is not None:
            for client in sentinel.sentinels:
                await client.aclose()


def _connect_sentinel(url: str, socket_timeout: float | None):
    target = parse_multi_host(url)
    if not target.path:
        raise ValueError(
            f"a sentinel URL names its service: {describe(url)!r} "
            "(redis+sentinel://host:port[,host:port]/service_name/db)"
        )
    service_name = target.path[0]
    db = int(target.path[1]) if len(target.path) > 1 else 0
    sentinel_kwargs: dict = {"socket_timeout": 2.0, "socket_connect_timeout": 2.0}
    if "sentinel_password" in target.query:
        sentinel_kwargs["password"] = target.query["sentinel_password"]
    primary_kwargs: dict = {}
    if target.tls:
        primary_kwargs = {"ssl": True, **_tls_options(target.query)}
    sentinel = Sentinel(target.hosts, sentinel_kwargs=sentinel_kwargs)
    client = sentinel.master_for(
        service_name,
        redis_class=SentinelRedis,
        db=db,
        username=target.username,
        password=target.password,
        socket_timeout=socket_timeout,
        socket_connect_timeout=2.0,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
        **primary_kwargs,
    )
    client.sentinel = sentinel
    return client


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
        server = _memory_server(url)
        from fakeredis import aioredis as fake_aioredis

        return fake_aioredis.FakeRedis(server=server)
    if is_cluster_url(url):
        # No single connection here: a cluster client talks to every primary.
        return _connect_cluster(url, max_connections, socket_timeout)
    if is_sentinel_url(url):
        # A pool per client, as below; `dedicated` is a plain-Redis shortcut only.
        return _connect_sentinel(url, socket_timeout)
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


_SECRET_QUERY = ("password", "username", "sentinel_password")


def describe(url: str) -> str:
    """The URL without its password, for logs and status output."""
    if is_memory(url):
        return url
    parsed = urlparse(url)
    secret_query = any(k.lower() in _SECRET_QUERY for k, _ in parse_qsl(parsed.query))
    if not parsed.password and not secret_query:
        return url
    if parsed.password:
        parsed = parsed._replace(netloc=parsed.netloc.replace(f":{parsed.password}@", ":***@"))
    if secret_query:
        query = [
            (k, "***" if k.lower() in _SECRET_QUERY else v)
            for k, v in parse_qsl(parsed.query, keep_blank_values=True)
        ]
        parsed = parsed._replace(query=urlencode(query, safe="*"))
    return parsed.geturl()


# -- what differs on a cluster -------------------------------------------------------------


def is_cluster(redis: object) -> bool:
    """Whether this client talks to a Redis Cluster (sharded pub/sub, many primaries)."""
    return isinstance(redis, RedisCluster)


async def publish(redis: aioredis.Redis, channel: str, message: bytes) -> int:
    """PUBLISH, or SPUBLISH on a cluster: there a plain PUBLISH is copied to every node,
    while a sharded channel lives on the shard that owns its slot."""
    if is_cluster(redis):
        return await redis.spublish(channel, message)
    return await redis.publish(channel, message)


async def scan_keys(redis: aioredis.Redis, match: str, count: int = 1000) -> AsyncIterator[bytes]:
    """Every key matching `match`; on a cluster redis-py's SCAN visits every primary."""
    async for key in redis.scan_iter(match=match, count=count):
        yield key
