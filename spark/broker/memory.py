"""What Redis says about its memory: a full Redis refuses writes, an evicting one drops keys.

Spark's keys (request streams, consumer groups, stored replies) must never be evicted: an
`allkeys-*` policy silently drops accepted requests. With `noeviction`, a Redis past
`maxmemory` refuses writes (OOM) until memory is freed: requests are refused as overloaded.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import ResponseError


@dataclass(frozen=True, slots=True)
class MemoryStatus:
    used: int
    #: maxmemory; 0 means no limit.
    limit: int
    policy: str

    @property
    def full(self) -> bool:
        """Past maxmemory with nothing to evict: writes are refused (OOM)."""
        return self.limit > 0 and self.used >= self.limit and self.policy == "noeviction"

    @property
    def evicts_spark_keys(self) -> bool:
        """Whether the policy may evict keys without a TTL (streams, groups)."""
        return self.limit > 0 and self.policy.startswith("allkeys-")


async def memory_status(redis: aioredis.Redis) -> MemoryStatus | None:
    """None when the server does not say (INFO disabled, the embedded broker)."""
    try:
        info = await redis.info("memory")
    except ResponseError:
        return None
    if "maxmemory" not in info:
        return None
    return MemoryStatus(
        used=int(info.get("used_memory", 0)),
        limit=int(info.get("maxmemory", 0)),
        policy=str(info.get("maxmemory_policy", "noeviction")),
    )
