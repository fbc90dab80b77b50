"""The worker's reply writer: replies, stored results and acks, batched, retried.

Replies of requests that finish together, their stored results and the acks (and deletes)
of their entries go out in one script call: Redis acknowledges an entry only when its reply
was written. On a Redis Cluster, where reply streams live in their clients' slots, replies
go out in one pipeline, then one pipeline acks the entries whose reply was written. Either
way an entry is acknowledged only after its reply is written. A write Redis refuses is
retried with the one backoff policy until the caller's deadline; past it nobody waits, and
the entry, left pending, is reclaimed and answered (or dead-lettered) like any entry of a
worker that failed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import cast

import redis.asyncio as aioredis

from spark.aio import Batcher
from spark.broker import Entry, ServiceQueue, replies
from spark.broker.connection import is_cluster
from spark.broker.retrying import REDIS_ERRORS, Backoff

log = logging.getLogger("spark.worker")


@dataclass(slots=True)
class Done:
    """A request's answer, ready to be written."""

    entry: Entry
    reply_to: str | None
    payload: bytes | None
    #: Idempotency key to store the reply under, or to release when the reply is not kept.
    store_key: str | None = None
    keep: bool = True
    #: Until when a failed reply write is retried (the caller stops waiting then).
    deadline: float = 0.0
    #: What to store under `store_key` (the reply bound to its request's fingerprint).
    stored: bytes | None = None


class ReplyWriter:
    def __init__(self, service: str, *, reply_ttl: int, idempotency_ttl: int):
        self.service = service
        self.reply_ttl = reply_ttl
        self.idempotency_ttl = idempotency_ttl
        #: Requests answered and acknowledged.
        self.processed = 0
        self._redis: aioredis.Redis | None = None
        self._queue: ServiceQueue | None = None
        self._batches: Batcher[Done, bool] = Batcher(self._write)
        self._retry = Backoff("writing replies", logger=log)
        #: Replies and acks in one script call (not on a cluster: see the module's doc).
        self._one_trip = True

    def open(self, redis: aioredis.Redis) -> None:
        """Write through `redis`: a dedicated client (one pipeline at a time)."""
        self._redis = redis
        self._queue = ServiceQueue(redis, self.service)
        self._one_trip = not is_cluster(redis)

    async def reply(self, done: Done) -> None:
        """Write the reply, then acknowledge; retry until the caller's deadline."""
        while True:
            try:
                if await self._batches.submit(done):
                    self._retry.succeeded()
                    return
                failure: BaseException = RuntimeError("Redis refused the reply")
            except REDIS_ERRORS as exc:
                failure = exc
            if time.time() >= done.deadline:
                log.error(
                    "giving up writing the reply for %r of %r: %s",
                    done.entry.entry_id,
                    self.service,
                    failure,
                )
                return
            await self._retry.pause(failure)

    async def _write(self, batch: list[Done]) -> list[bool]:
        """Replies, stored results and acks of those written: one round trip, or two on a
        cluster. One attempt each: reply() retries (with backoff, until the caller's
        deadline) what is not written; a reply written twice is dropped by its client."""
        if self._one_trip:
            return await self._write_one_trip(batch)
        return await self._write_two_trips(batch)

    async def _write_one_trip(self, batch: list[Done]) -> list[bool]:
        assert self._queue is not None
        stored = [
            (d.store_key, d.stored if d.keep else None, self.idempotency_ttl)
            for d in batch
            if d.store_key
        ]
        reply_list: list[tuple[str, bytes]] = []
        entries: list[tuple[bytes, int, int]] = []
        for d in batch:
            if d.reply_to is None:
                index = 0
            elif d.payload is None:
                index = -1  # nothing to send: never finished here (as in two trips)
            else:
                reply_list.append((d.reply_to, d.payload))
                index = len(reply_list)
            entries.append((d.entry.entry_id, len(d.entry.raw or b""), index))
        written = await self._queue.reply_and_finish(
            reply_list, stored, entries, reply_ttl=self.reply_ttl
        )
        finished = [
            index == 0 or (index > 0 and written[index - 1]) for (_id, _nbytes, index) in entries
        ]
        self.processed += sum(finished)
        return finished

    async def _write_two_trips(self, batch: list[Done]) -> list[bool]:
        """Replies (and stored results) in one pipeline, then acks for those written."""
        assert self._redis is not None and self._queue is not None
        with_reply = [d for d in batch if d.reply_to is not None and d.payload is not None]
        stored = [
            (d.store_key, d.stored if d.keep else None, self.idempotency_ttl)
            for d in batch
            if d.store_key
        ]
        ok = await replies.push(
            self._redis,
            # with_reply holds only replies with an address and a payload.
            cast("list[tuple[str, bytes]]", [(d.reply_to, d.payload) for d in with_reply]),
            stored,
            ttl=self.reply_ttl,
        )
        written = {id(d) for d, good in zip(with_reply, ok, strict=True) if good}
        finished = [d.reply_to is None or id(d) in written for d in batch]
        done = [d.entry for d, fin in zip(batch, finished, strict=True) if fin]
        await self._queue.finish([e.entry_id for e in done], sum(len(e.raw) for e in done if e.raw))
        self.processed += sum(finished)
        return finished
