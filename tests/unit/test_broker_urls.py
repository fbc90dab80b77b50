"""Broker URLs: which client each scheme gets, multi-host parsing, passwords kept out of logs."""

from __future__ import annotations

import pytest
from redis.asyncio.sentinel import SentinelConnectionPool

from spark.broker.connection import (
    ClusterClient,
    SentinelRedis,
    connect,
    describe,
    is_broker_url,
    is_cluster_url,
    is_sentinel_url,
    parse_multi_host,
)


def test_multi_host_urls_are_parsed():
    url = parse_multi_host("rediss+cluster://user:p%40ss@10.0.0.1:7000,10.0.0.2:7001,host3")
    assert url.tls and url.username == "user" and url.password == "p@ss"
    assert url.hosts == [("10.0.0.1", 7000), ("10.0.0.2", 7001), ("host3", 6379)]
    sentinel = parse_multi_host("redis+sentinel://:pw@s1:26379,s2:26379/mymaster/2?x=1")
    assert sentinel.hosts == [("s1", 26379), ("s2", 26379)]
    assert sentinel.path == ["mymaster", "2"] and sentinel.query == {"x": "1"}
    assert sentinel.password == "pw" and sentinel.username is None


@pytest.mark.parametrize("bad", ["redis+cluster://", "redis+cluster://h:notaport", "nohost"])
def test_bad_multi_host_urls_are_refused(bad):
    with pytest.raises(ValueError):
        parse_multi_host(bad)


def test_schemes():
    assert is_cluster_url("redis+cluster://h:1") and is_cluster_url("rediss+cluster://h:1")
    assert is_sentinel_url("redis+sentinel://h:1/m") and not is_cluster_url("redis://h")
    for url in ("redis://h", "rediss://h", "unix:///s", "memory://", "redis+cluster://h:1"):
        assert is_broker_url(url), url
    for url in ("http://h:8000", "ws://h/ws", "redis", "https://h"):
        assert not is_broker_url(url), url


async def test_each_scheme_gets_its_client():
    cluster = connect("redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
    assert isinstance(cluster, ClusterClient)
    assert [(n.host, n.port) for n in cluster.startup_nodes] == [
        ("127.0.0.1", 7000),
        ("127.0.0.1", 7001),
    ]
    await cluster.aclose()
    sentinel = connect("redis+sentinel://:pw@127.0.0.1:26379/mymaster/3")
    assert isinstance(sentinel, SentinelRedis)
    pool = sentinel.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "mymaster"
    assert pool.connection_kwargs["db"] == 3 and pool.connection_kwargs["password"] == "pw"
    await sentinel.aclose()
    with pytest.raises(ValueError, match="service"):
        connect("redis+sentinel://127.0.0.1:26379")
    with pytest.raises(ValueError, match="database 0"):
        connect("redis+cluster://127.0.0.1:7000/1")


def test_passwords_are_hidden():
    assert describe("redis+cluster://u:secret@a:1,b:2") == "redis+cluster://u:***@a:1,b:2"
    shown = describe("redis+sentinel://a:1/m/0?sentinel_password=s3")
    assert "s3" not in shown and "sentinel_password=***" in shown


async def test_tls_cluster_and_sentinel_urls_use_tls_connections():
    from redis.asyncio.connection import SSLConnection
    from redis.asyncio.sentinel import SentinelManagedSSLConnection

    cluster = connect("rediss+cluster://:pw@127.0.0.1:7000?ssl_ca_certs=/etc/ca.pem")
    kwargs = cluster.connection_kwargs
    assert kwargs["connection_class"] is SSLConnection
    assert kwargs["ssl_ca_certs"] == "/etc/ca.pem" and kwargs["password"] == "pw"
    await cluster.aclose()
    sentinel = connect("rediss+sentinel://127.0.0.1:26379/mymaster?ssl_cert_reqs=none")
    pool = sentinel.connection_pool
    assert issubclass(pool.connection_class, SentinelManagedSSLConnection)
    assert pool.connection_kwargs["ssl_cert_reqs"] == "none"
    await sentinel.aclose()
