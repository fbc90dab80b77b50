"""The broker layer: the only code that knows Redis keys and commands."""

#: Exceptions that mean "Redis is unreachable right now"; loops back off and retry on them.
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from spark.broker.connection import MEMORY_URL, connect, describe, is_memory, resolve_url
from spark.broker.envelope import Envelope
from spark.broker.queue import Entry, ServiceQueue

UNREACHABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)

__all__ = [
    "MEMORY_URL",
    "UNREACHABLE",
    "Entry",
    "Envelope",
    "ServiceQueue",
    "connect",
    "describe",
    "is_memory",
    "resolve_url",
]
