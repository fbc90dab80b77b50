"""hiredis packs commands byte for byte as redis-py does, and redis-py still packs (or
refuses) what hiredis does not take."""

from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection
from redis.exceptions import DataError

from spark.broker.packing import hiredis_packing

COMMANDS = [
    ("XADD", "spark:{svc}:requests", "*", b"e", b'{"id":"1","method":"echo"}'),
    ("SET", "k", "\u00e9t\u00e9", "EX", 3600),
    ("EVALSHA", "abc", 1, "key", 10_000, b"\x00\xff"),
    ("SET", "f", 0.1, "g", 1e20, 2**70),
    (b"XACK", b"s", b"g", b"1-0"),
    ("CONFIG GET", "maxmemory"),  # a name with a space: redis-py splits it
    ("SET", "m", memoryview(b"view")),
]


@pytest.mark.parametrize("args", COMMANDS)
def test_same_bytes_as_redis_py(args):
    fast = hiredis_packing(Connection)()
    assert b"".join(fast.pack_command(*args)) == b"".join(Connection().pack_command(*args))


def test_values_redis_py_refuses_are_still_refused():
    fast = hiredis_packing(Connection)()
    for bad in (None, True, {"a": 1}):
        with pytest.raises(DataError):
            fast.pack_command("SET", "k", bad)


def test_every_connection_kind_keeps_its_own_class():
    for cls in (Connection, SSLConnection, UnixDomainSocketConnection):
        fast = hiredis_packing(cls)
        assert issubclass(fast, cls)
        assert hiredis_packing(cls) is fast  # made once
