"""Fixtures shared by every test.

`redis_server` is one real redis-server per test session; `redis_url` gives each test a
clean database on it. Tests that stop or restart Redis make their own `RedisServer`.
"""

from __future__ import annotations

import re
import uuid

import pytest

from support.redis_server import RedisServer


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
