"""Fixtures shared by every test.

`redis_server` is one real redis-server per test session; `redis_url` gives each test a
clean database on it. Tests that stop or restart Redis make their own `RedisServer`.

`redis_cluster` (3 primaries, 3 replicas) and `redis_sentinel` (a primary, a replica, 3
sentinels) also start once per session, when first asked for. A test marked
`@pytest.mark.topologies()` runs once per topology: its `redis_url` is then a single Redis,
a `redis+cluster://` URL and a `redis+sentinel://` URL in turn (name some to narrow it:
`@pytest.mark.topologies("cluster")`).
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from support.redis_cluster import RedisClusterGroup, SentinelGroup
from support.redis_server import RedisServer

#: Folders whose every test is an integration test (`-m "not integration"` leaves unit only).
INTEGRATION_DIRS = ("integration", "lab")
#: Fixtures that start real servers: an integration test's, never a unit test's.
REAL_SERVER_FIXTURES = {"redis_server", "redis_url", "redis_cluster", "redis_sentinel"}


def pytest_collection_modifyitems(config, items):
    tests = Path(__file__).resolve().parent
    for item in items:
        folder = Path(str(item.fspath)).resolve().relative_to(tests).parts[0]
        if folder in INTEGRATION_DIRS:
            item.add_marker(pytest.mark.integration)
        elif REAL_SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            raise pytest.UsageError(
                f"{item.nodeid} starts a real redis-server: move it to tests/integration"
            )


TOPOLOGIES = ("single", "cluster", "sentinel")


def pytest_generate_tests(metafunc):
    marker = metafunc.definition.get_closest_marker("topologies")
    if marker is not None and "redis_url" in metafunc.fixturenames:
        metafunc.parametrize("redis_url", marker.args or TOPOLOGIES, indirect=True)


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def redis_cluster():
    group = RedisClusterGroup().start()
    try:
        yield group
    finally:
        group.cleanup()


@pytest.fixture(scope="session")
def redis_sentinel():
    group = SentinelGroup().start()
    try:
        yield group
    finally:
        group.cleanup()


@pytest.fixture
def redis_url(request) -> str:
    """A clean database: on the session's redis-server, or (marked tests) a cluster or
    sentinel group, healed first if an earlier test killed one of its servers."""
    topology = getattr(request, "param", "single")
    if topology == "single":
        import redis

        server = request.getfixturevalue("redis_server")
        client = redis.Redis.from_url(server.url)
        try:
            client.flushall()
        finally:
            client.close()
        return server.url
    group = request.getfixturevalue(f"redis_{topology}")
    for server in group.servers:
        if server.proc is None:
            group.revive(server)
    group.flush()
    return group.url


@pytest.fixture
def memory_url(request) -> str:
    """A private embedded broker for one test."""
    # Unique per test (not per function name) and in the keys alphabet.
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.nodeid)
    return f"memory://{safe}-{uuid.uuid4().hex[:8]}"
