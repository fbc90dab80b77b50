"""Replies: workers append them to a stream per client; one reader per client process reads it.

A stream per client (rather than a key per request) lets a single blocking reader serve
every call in flight: one XREAD BLOCK returns every reply queued. Reading a stream is not
destructive, so a reply whose delivery is cut by a dropped connection is read again from the
last id processed; processed replies are trimmed every TRIM_EVERY replies (and when idle).
The stream expires when nobody reads it (the client went away).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import redis.asyncio as aioredis

from spark.broker.keys import reply_key
from spark.broker.resp import StreamsReply

#: How long replies for a client that stopped reading stay around.
DEFAULT_REPLY_TTL = 300
#: How many queued replies one read takes.
READ_COUNT = 512
FIELD = b"r"
#: Processed replies are trimmed in bulk: one XTRIM per this many, off the reply path.
TRIM_EVERY = 256
#: Read from the start: replies written before the reader's first read are not missed.
START = b"0-0"
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
        pipe.xadd(key, {FIELD: payload})
        pipe.expire(key, ttl)
    results = await pipe.execute(raise_on_error=False)
    base = len(stored)
    return [not isinstance(results[base + 2 * i], Exception) for i in range(len(replies))]


async def read(
    redis: aioredis.Redis, client_id: str, after: bytes, block_seconds: float
) -> list[tuple[bytes, bytes]]:
    """(id, reply) of replies after `after`, waiting up to `block_seconds` for the first."""
    got = cast(
        StreamsReply,
        await redis.xread(
            {reply_key(client_id): after},
            count=READ_COUNT,
            block=max(1, int(block_seconds * 1000)),
        ),
    )
    if not got:
        return []
    return [(entry_id, fields.get(FIELD, b"")) for entry_id, fields in got[0][1]]


async def trim(redis: aioredis.Redis, client_id: str, upto: bytes) -> None:
    """Forget replies up to and including `upto` (processed)."""
    await redis.xtrim(reply_key(client_id), minid=_successor(upto), approximate=False)


def _successor(entry_id: bytes) -> str:
    ms, _, seq = entry_id.decode().partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


async def claim_idempotency(
    redis: aioredis.Redis, key: str, owner: bytes, lease_seconds: float
) -> bytes | None:
    """Mark `key` as running under `owner` unless something is stored there already.

    Returns what was there: None (the caller runs the handler), a RUNNING marker (a first
    request is still running), or the stored reply.
    """
    previous = await redis.set(
        key, RUNNING + owner, nx=True, get=True, px=max(1, int(lease_seconds * 1000))
    )
    return cast("bytes | None", previous)  # SET ... GET answers the old value
