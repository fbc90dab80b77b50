"""Replies: workers push them onto a list per client; one reader per client process pops them.

A list per client (rather than a key per request) lets a single blocking reader serve every
call in flight: it BLPOPs for the first reply, then LPOPs whatever else is queued in the same
round trip budget. The list expires when nobody reads it (the client went away).
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from spark.broker.keys import reply_key

#: How long replies for a client that stopped reading stay around.
DEFAULT_REPLY_TTL = 300
#: How many queued replies one LPOP takes.
DRAIN_COUNT = 512
#: Marker stored under an idempotency key while its first request runs.
RUNNING = b"\x00running:"


async def push(
    redis: aioredis.Redis,
    replies: Sequence[tuple[str, bytes]],
    stored: Sequence[tuple[str, bytes | None, int]] = (),
    *,
    ttl: int = DEFAULT_REPLY_TTL,
) -> list[bool]:
    """Write replies (client id, payload) and stored results (key, payload, ttl) in one trip.

    A stored result with payload None releases its idempotency key instead.

    Returns, per reply, whether it was written, so the caller acknowledges only those.
    """
    pipe = redis.pipeline(transaction=False)
    for key, payload, seconds in stored:
        if payload is None:
            pipe.delete(key)
        else:
            pipe.set(key, payload, ex=seconds)
    for client_id, payload in replies:
        key = reply_key(client_id)
        pipe.rpush(key, payload)
        pipe.expire(key, ttl)
    results = await pipe.execute(raise_on_error=False)
    base = len(stored)
    return [not isinstance(results[base + 2 * i], Exception) for i in range(len(replies))]


async def wait(redis: aioredis.Redis, client_id: str, block_seconds: float) -> bytes | None:
    """The next reply for `client_id`, waiting up to `block_seconds` for one."""
    first = await redis.blpop([reply_key(client_id)], timeout=block_seconds)
    return first[1] if first else None


async def drain(redis: aioredis.Redis, client_id: str) -> list[bytes]:
    """Every reply already queued for `client_id` (up to DRAIN_COUNT), without waiting."""
    return await redis.lpop(reply_key(client_id), DRAIN_COUNT) or []


async def claim_idempotency(
    redis: aioredis.Redis, key: str, owner: bytes, lease_seconds: float
) -> bytes | None:
    """Mark `key` as running under `owner` unless something is stored there already.

    Returns what was there: None (the caller runs the handler), a RUNNING marker (a first
    request is still running), or the stored reply.
    """
    return await redis.set(
        key, RUNNING + owner, nx=True, get=True, px=max(1, int(lease_seconds * 1000))
    )


async def release_idempotency(redis: aioredis.Redis, key: str) -> None:
    await redis.delete(key)
