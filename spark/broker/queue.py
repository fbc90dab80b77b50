"""One service's request stream: enqueue, read, reclaim, renew, finish, dead-letter.

The stream holds only work not yet finished: a worker acknowledges *and deletes* an entry
once its reply is written, so the stream's length is the backlog. Producers refuse new work
past `max_backlog` (OverloadedError) instead of trimming, which would drop accepted requests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from redis.exceptions import OutOfMemoryError, ResponseError

from spark.broker.envelope import FIELD
from spark.broker.keys import GROUP, SERVICES, ServiceKeys, reply_key
from spark.broker.replies import FIELD as REPLY_FIELD
from spark.broker.resp import ClaimedEntries, Fields, PendingRow, StreamsReply
from spark.broker.scripts import script
from spark.errors import OverloadedError

log = logging.getLogger("spark.broker")

DEFAULT_MAX_BACKLOG = 100_000
#: Bytes of envelopes a service's stream may hold: entries alone do not bound memory
#: (100,000 one-megabyte requests are 100 GB).
DEFAULT_MAX_BACKLOG_BYTES = 256 * 1024 * 1024
#: Dead-letter stream cap: it is for inspection and replay, not an archive.
DEAD_LETTER_MAXLEN = 10_000


@dataclass(slots=True)
class Entry:
    entry_id: bytes
    raw: bytes | None
    #: Times this entry has been delivered to a consumer, this delivery included.
    deliveries: int = 1


def group_lost(exc: ResponseError) -> bool:
    """Whether Redis says our consumer group (or the stream under it) is gone."""
    text = str(exc)
    return text.startswith(("NOGROUP", "UNBLOCKED")) or "NOGROUP" in text


def _entries(messages: Iterable[tuple[bytes, Fields | None]]) -> list[Entry]:
    return [Entry(mid, fields.get(FIELD) if fields else None) for mid, fields in messages]


class ServiceQueue:
    def __init__(
        self,
        redis: aioredis.Redis,
        service: str,
        *,
        max_backlog: int = DEFAULT_MAX_BACKLOG,
        max_backlog_bytes: int = DEFAULT_MAX_BACKLOG_BYTES,
    ):
        self.redis = redis
        self.keys = ServiceKeys.for_service(service)
        self.max_backlog = max_backlog
        self.max_backlog_bytes = max_backlog_bytes
        self._enqueue = script(redis, "enqueue")
        self._reply_finish = script(redis, "reply_finish")

    @property
    def service(self) -> str:
        return self.keys.service

    async def ensure_group(self) -> None:
        """Create the stream and group; id 0 so entries enqueued before any worker are served."""
        try:
            await self.redis.xgroup_create(self.keys.requests, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        await self.redis.sadd(SERVICES, self.service)

    async def enqueue(self, envelopes: list[bytes]) -> list[bytes | None]:
        """Append envelopes in one round trip; None where the backlog was full (entries or
        bytes; an envelope alone in the stream is always accepted, whatever its size).

        A Redis out of memory (maxmemory, noeviction) is an overload: OverloadedError,
        which callers may retry, rather than a raw Redis error.
        """
        try:
            ids = await self._enqueue(
                keys=[self.keys.requests, self.keys.backlog_bytes],
                args=[self.max_backlog, self.max_backlog_bytes, *envelopes],
            )
        except OutOfMemoryError as exc:
            raise OverloadedError(
                "the broker is out of memory", data={"service": self.service, "redis": str(exc)}
            ) from exc
        return [i if i else None for i in ids]

    async def read(
        self, redis: aioredis.Redis, consumer: str, count: int, block_ms: int
    ) -> list[Entry]:
        """New entries for `consumer`, blocking up to `block_ms` on the given (dedicated) client."""
        try:
            reply = cast(
                StreamsReply,
                await redis.xreadgroup(
                    GROUP, consumer, {self.keys.requests: ">"}, count=count, block=block_ms
                ),
            )
        except ResponseError as exc:
            if str(exc).startswith("UNBLOCKED"):
                # The stream left this node while we waited (its slot moved to another shard
                # of a cluster, it was deleted, the node was demoted): read again, wherever
                # it is now (a NOGROUP or READONLY answer then says what became of it).
                return []
            if not group_lost(exc):
                raise
            # The stream (and its group) was deleted under us: DEL, FLUSHALL, a Redis without
            # persistence restarted, a failover to a replica without it (NOGROUP), or while
            # we were blocked on it (UNBLOCKED). Start over with a new group.
            log.warning(
                "request stream of %r was reset (%s); recreating its group", self.service, exc
            )
            await self.ensure_group()
            return []
        if not reply:
            return []
        return _entries(reply[0][1])

    async def reclaim(self, consumer: str, min_idle_ms: int, count: int) -> list[Entry]:
        """Take over entries idle longer than `min_idle_ms` (their worker stopped renewing)."""
        try:
            _next, messages, *_deleted = await self.redis.xautoclaim(
                self.keys.requests,
                GROUP,
                consumer,
                min_idle_time=min_idle_ms,
                start_id="0-0",
                count=count,
            )
        except ResponseError as exc:
            if not group_lost(exc):
                raise
            await self.ensure_group()
            return []
        entries = _entries(messages)
        if entries:
            counts = await self.deliveries(consumer, [e.entry_id for e in entries])
            for e in entries:
                e.deliveries = counts.get(e.entry_id, 1)
        return entries

    async def reclaimable(self, min_idle_ms: int) -> bool:
        """Whether some entry has sat unrenewed for `min_idle_ms` (its worker is gone)."""
        try:
            rows = await self.redis.xpending_range(
                self.keys.requests, GROUP, "-", "+", 1, idle=min_idle_ms
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            return False
        return bool(rows)

    async def deliveries(self, consumer: str, entry_ids: list[bytes]) -> dict[bytes, int]:
        lo, hi = min(entry_ids), max(entry_ids)
        rows = cast(
            "list[PendingRow]",
            await self.redis.xpending_range(
                self.keys.requests, GROUP, lo, hi, len(entry_ids) + 1024, consumername=consumer
            ),
        )
        return {r["message_id"]: r["times_delivered"] for r in rows}

    async def own_pending(self, consumer: str, count: int = 1000) -> list[Entry]:
        """Entries delivered to `consumer` and not finished, with their data.

        For a worker that abandoned a blocking read: Redis may have delivered entries whose
        reply never reached it; they are in its pending list all the same.
        """
        rows = cast(
            "list[PendingRow]",
            await self.redis.xpending_range(
                self.keys.requests, GROUP, "-", "+", count, consumername=consumer
            ),
        )
        if not rows:
            return []
        counts = {r["message_id"]: r["times_delivered"] for r in rows}
        # JUSTID is not used: this fetches the entries; claiming to the owner changes nothing
        # but the idle time (and, without JUSTID, the delivery counter, which we restore).
        messages = cast(
            ClaimedEntries,
            await self.redis.xclaim(
                self.keys.requests, GROUP, consumer, 0, [*counts], justid=False
            ),
        )
        entries = _entries(messages)
        for e in entries:
            e.deliveries = counts.get(e.entry_id, 1)
        return entries

    async def renew(self, consumer: str, entry_ids: list[bytes]) -> None:
        """Reset the idle time of entries still being worked on, so nobody reclaims them.

        JUSTID leaves the delivery counter alone: a long handler is not a redelivery.
        """
        if entry_ids:
            await self.redis.xclaim(
                self.keys.requests, GROUP, consumer, 0, [*entry_ids], justid=True
            )

    async def finish(self, entry_ids: list[bytes], nbytes: int = 0) -> None:
        """Acknowledge and delete finished entries (only ever after their reply is written);
        `nbytes`, the size of their envelopes, leaves the backlog's byte count."""
        if not entry_ids:
            return
        pipe = self.redis.pipeline(transaction=False)
        pipe.xack(self.keys.requests, GROUP, *entry_ids)
        pipe.xdel(self.keys.requests, *entry_ids)
        if nbytes:
            pipe.decrby(self.keys.backlog_bytes, nbytes)
        await pipe.execute()

    async def reply_and_finish(
        self,
        replies: Sequence[tuple[str, bytes]],
        stored: Sequence[tuple[str, bytes | None, int]],
        entries: Sequence[tuple[bytes, int, int]],
        *,
        reply_ttl: int,
    ) -> list[bool]:
        """Write replies (client id, payload) and stored results (key, payload or None to
        release it, ttl), then finish entries (id, envelope bytes, 1-based index of their
        reply, 0 for none), in one round trip (`lua/reply_finish.lua`).

        An entry is finished only when its reply was written; returns, per reply, whether
        it was. Not on a Redis Cluster, where reply streams are in other slots than the
        service's keys (see `replies.push` and `finish` there).
        """
        args: list[bytes | str | int] = [
            GROUP,
            REPLY_FIELD,
            reply_ttl,
            len(replies),
            len(stored),
            len(entries),
        ]
        for _key, payload, seconds in stored:
            args += (0, b"") if payload is None else (seconds, payload)
        args += [payload for _client, payload in replies]
        for entry_id, nbytes, reply in entries:
            args += (entry_id, nbytes, reply)
        written = await self._reply_finish(
            keys=[
                self.keys.requests,
                self.keys.backlog_bytes,
                *(reply_key(client) for client, _payload in replies),
                *(key for key, _payload, _seconds in stored),
            ],
            args=args,
        )
        return [bool(w) for w in written]

    async def dead_letter(self, entry: Entry, error: dict[str, Any], consumer: str) -> None:
        """Move an entry to the dead-letter stream with its last error, then finish it."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.xadd(
            self.keys.dead,
            {
                b"e": entry.raw or b"",
                b"entry_id": entry.entry_id,
                b"error": orjson.dumps(error),
                b"deliveries": str(entry.deliveries),
                b"consumer": consumer,
                b"at": repr(time.time()),
            },
            maxlen=DEAD_LETTER_MAXLEN,
            approximate=True,
        )
        pipe.xack(self.keys.requests, GROUP, entry.entry_id)
        pipe.xdel(self.keys.requests, entry.entry_id)
        if entry.raw:
            pipe.decrby(self.keys.backlog_bytes, len(entry.raw))
        await pipe.execute()

    async def stats(self) -> dict[str, int]:
        """Backlog (entries not finished), pending (delivered, not finished), dead letters.

        Before any worker created the group, XPENDING fails: only `pending` is 0 then.
        """
        pipe = self.redis.pipeline(transaction=False)
        pipe.xlen(self.keys.requests)
        pipe.xlen(self.keys.dead)
        pipe.xpending(self.keys.requests, GROUP)
        backlog, dead, pending = await pipe.execute(raise_on_error=False)
        pending = 0 if isinstance(pending, Exception) or not pending else pending["pending"]
        return {"backlog": backlog, "pending": pending, "dead": dead}
