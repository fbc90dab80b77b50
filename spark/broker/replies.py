"""Replies: workers append them to a stream per client; one reader per client process reads it.

A stream per client (rather than a key per request) lets a single blocking reader serve
every call in flight: one XREAD BLOCK returns every reply queued. Reading a stream is not
destructive, so a reply whose delivery is cut by a dropped connection is read again from the
last id processed; processed replies are trimmed every TRIM_EVERY replies (and when idle).
The stream expires when nobody reads it (the client went away).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import orjson
import redis.asyncio as aioredis

from spark.broker.keys import reply_key
from spark.broker.scripts import script

#: How long replies for a client that stopped reading stay around.
DEFAULT_REPLY_TTL = 300
#: How many queued replies one read takes.
READ_COUNT = 512
FIELD = b"r"
#: Processed replies are trimmed in bulk: one XTRIM per this many, off the reply path.
TRIM_EVERY = 256
#: Read from the start: replies written before the reader's first read are not missed.
START = b"0-0"
#: Marker stored under an idempotency key while its first request runs:
#: RUNNING + fingerprint + b"/" + owner (the entry id running it).
RUNNING = b"\x00running:"
#: A stored reply is fingerprint + SEP + reply: the key answers only the same request.
SEP = b"\n"


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
    got = await redis.xread(
        {reply_key(client_id): after}, count=READ_COUNT, block=max(1, int(block_seconds * 1000))
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


def fingerprint(method: str, params: Any) -> bytes:
    """What an idempotency key is bound to: the method and its params (key order ignored)."""
    doc = orjson.dumps([method, params], option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(doc, digest_size=16).hexdigest().encode()


def running_marker(digest: bytes, owner: bytes) -> bytes:
    return RUNNING + digest + b"/" + owner


def stored_value(digest: bytes, reply: bytes) -> bytes:
    return digest + SEP + reply


def read_claim(value: bytes) -> tuple[bool, bytes | None, bytes]:
    """(running, fingerprint, rest) of what an idempotency key holds.

    rest is the owner of a RUNNING marker, else the stored reply. A reply stored before
    keys were bound to requests (a bare JSON object) has fingerprint None.
    """
    if value.startswith(RUNNING):
        digest, _, owner = value[len(RUNNING) :].partition(b"/")
        return True, digest, owner
    if value.startswith(b"{"):
        return False, None, value
    digest, _, reply = value.partition(SEP)
    return False, digest, reply


async def claim_idempotency(
    redis: aioredis.Redis, key: str, marker: bytes, lease_seconds: float
) -> bytes | None:
    """Store `marker` (see `running_marker`) under `key` unless something is there already.

    Returns what was there: None (the caller runs the handler), a RUNNING marker (a first
    request is still running), or the stored reply (see `read_claim`).
    """
    return await redis.set(key, marker, nx=True, get=True, px=max(1, int(lease_seconds * 1000)))


async def renew_claims(
    redis: aioredis.Redis, claims: Sequence[tuple[str, bytes]], lease_seconds: float
) -> None:
    """Extend the lease of RUNNING markers (key, marker) still held by their owner.

    Run with the entries' own lease renewal: a handler that outlives the first lease keeps
    its key, so a repeat waits for its reply instead of running the handler a second time.
    """
    if not claims:
        return
    renew = script(redis, "renew_claims")
    await renew(
        keys=[k for k, _ in claims],
        args=[max(1, int(lease_seconds * 1000)), *(m for _, m in claims)],
    )
