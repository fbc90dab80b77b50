"""Worker heartbeats: who serves which service, for health checks, `spark status` and the edge.

A sorted set per service scores each worker (consumer name) by the time its heartbeat
expires; a worker is live while that time is in the future. A hash keeps each worker's last
reported figures. Both are cleaned by the workers themselves.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from spark.broker.connection import scan_keys
from spark.broker.keys import GROUP, REQUESTS_PATTERN, SERVICES, ServiceKeys, service_of


async def beat(
    redis: aioredis.Redis, keys: ServiceKeys, consumer: str, ttl: float, info: dict[str, Any]
) -> None:
    now = time.time()
    pipe = redis.pipeline(transaction=False)
    pipe.zadd(keys.workers, {consumer: now + ttl})
    pipe.hset(keys.worker_info, consumer, orjson.dumps({**info, "at": now}))
    pipe.sadd(SERVICES, keys.service)
    await pipe.execute()


async def server_time(redis: aioredis.Redis) -> float:
    """Redis's clock (TIME), seconds since the epoch: the clock stream entry ids are on."""
    seconds, micros = await redis.time()
    return seconds + micros / 1_000_000


async def leave(redis: aioredis.Redis, keys: ServiceKeys, consumer: str) -> None:
    """A worker stops: forget its heartbeat, and its consumer when it holds nothing.

    A consumer still holding pending entries stays: XGROUP DELCONSUMER would drop them, and
    live workers reclaim them from it.
    """
    pipe = redis.pipeline(transaction=False)
    pipe.zrem(keys.workers, consumer)
    pipe.hdel(keys.worker_info, consumer)
    await pipe.execute()
    try:
        held = await redis.xpending_range(keys.requests, GROUP, "-", "+", 1, consumername=consumer)
    except ResponseError:
        return  # no group (the stream is gone): nothing to remove
    if not held:
        await redis.xgroup_delconsumer(keys.requests, GROUP, consumer)


async def live_count(redis: aioredis.Redis, keys: ServiceKeys) -> int:
    return await redis.zcount(keys.workers, time.time(), "+inf")


async def is_live(redis: aioredis.Redis, keys: ServiceKeys, consumer: str) -> bool:
    """Whether this one worker's heartbeat is fresh (for its own health check)."""
    expires = await redis.zscore(keys.workers, consumer)
    return expires is not None and expires > time.time()


async def live_workers(redis: aioredis.Redis, keys: ServiceKeys) -> dict[str, dict]:
    pipe = redis.pipeline(transaction=False)
    pipe.zrangebyscore(keys.workers, time.time(), "+inf")
    pipe.hgetall(keys.worker_info)
    names, info = await pipe.execute()
    return {n.decode(): orjson.loads(info[n]) if n in info else {} for n in names}


async def services(redis: aioredis.Redis, *, scan: bool = False) -> list[str]:
    """Every service that ever had a worker (the registry set).

    `scan=True` (the operator's `spark status` and `spark dlq`) also lists every service
    with a request stream, found by SCAN on every primary: on a cluster the services' keys
    are spread over the shards, and a service whose requests were sent before any worker
    started, or whose entry the registry set's shard lost in a failover, still shows.
    """
    names = {s.decode() for s in await redis.smembers(SERVICES)}
    if scan:
        async for key in scan_keys(redis, REQUESTS_PATTERN):
            name = service_of(key.decode("utf-8", "replace"))
            if name is not None:
                names.add(name)
    return sorted(names)


async def prune(redis: aioredis.Redis, keys: ServiceKeys, grace: float) -> list[str]:
    """Forget workers whose heartbeat expired `grace` seconds ago.

    Their consumer is removed from the group only when it holds no pending entries:
    XGROUP DELCONSUMER drops a consumer's pending entries, which would lose requests that
    live workers are about to reclaim.
    """
    cutoff = time.time() - grace
    dead = [d.decode() for d in await redis.zrangebyscore(keys.workers, "-inf", cutoff)]
    if not dead:
        return []
    try:
        consumers = {
            c["name"].decode(): c["pending"]
            for c in await redis.xinfo_consumers(keys.requests, GROUP)
        }
    except ResponseError:
        consumers = {}
    pipe = redis.pipeline(transaction=False)
    for name in dead:
        pipe.zrem(keys.workers, name)
        pipe.hdel(keys.worker_info, name)
        if consumers.get(name) == 0:
            pipe.xgroup_delconsumer(keys.requests, GROUP, name)
    await pipe.execute(raise_on_error=False)
    return dead
