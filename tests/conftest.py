"""Fixtures shared by every test.

`redis_server` is one real redis-server per test session; `redis_url` gives each test a
clean database on it. Tests that stop or restart Redis make their own `RedisServer`.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from support.redis_server import RedisServer

#: Folders whose every test is an integration test (`-m "not integration"` leaves unit only).
INTEGRATION_DIRS = ("integration", "lab")
#: Fixtures that start real servers: an integration test's, never a unit test's.
REAL_SERVER_FIXTURES = {"redis_server", "redis_url"}


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


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def redis_url(redis_server) -> str:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url


@pytest.fixture
def memory_url(request) -> str:
    """A private embedded broker for one test."""
    # Unique per test (not per function name) and in the keys alphabet.
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.nodeid)
    return f"memory://{safe}-{uuid.uuid4().hex[:8]}"
