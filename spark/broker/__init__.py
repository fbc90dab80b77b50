"""The broker layer: the only code that knows Redis keys and commands."""

#: Exceptions that mean "Redis is unreachable right now"; loops back off and retry on them.
from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    ReadOnlyError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from spark.broker.connection import MEMORY_URL, connect, describe, is_memory, resolve_url
from spark.broker.envelope import Envelope
from spark.broker.queue import Entry, ServiceQueue

# A cluster failing over answers CLUSTERDOWN / TRYAGAIN (or no slot owner is known yet,
# ClusterError); a demoted primary answers READONLY until clients follow the new one.
UNREACHABLE = (
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    OSError,
    ClusterDownError,
    ClusterError,
    TryAgainError,
    ReadOnlyError,
    SlotNotCoveredError,
)

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
