"""Operator commands on a service's streams: status figures, dead-letter inspection, replay, purge.

What `spark status` and `spark dlq` run. Like the rest of the broker layer this is the only
place these Redis commands are written; it adds nothing to the keyspace (keys.py).

Replay puts a dead-lettered request back on its service's request stream as a
*notification*: the caller that sent it stopped waiting long ago, so `reply_to` (and the
WebSocket `client`) are dropped, and it gets a fresh deadline. Its id, method, params,
idempotency key and state namespace are kept, so a request that did run before it was
dead-lettered is answered from its stored reply instead of running twice (when it had a key).
Moving an entry is one Lua call (delete from the dead-letter stream, append to the request
stream, under the service's backlog limit), so two operators replaying at once never enqueue
the same dead letter twice, and a full backlog stops a replay without losing anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis

from spark.broker import registry
from spark.broker.envelope import FIELD, Envelope
from spark.broker.keys import GROUP, SERVICES, ServiceKeys
from spark.broker.queue import DEFAULT_MAX_BACKLOG
from spark.broker.scripts import script
from spark.errors import InvalidRequestError

#: Default seconds a replayed request has to run (its original deadline passed long ago).
DEFAULT_REPLAY_TIMEOUT = 300.0
#: Dead letters moved per round trip.
REPLAY_BATCH = 100

# Kept here rather than in lua/ only because this module was written alongside other
# changes to the broker package; it belongs in lua/replay.lua (loaded with scripts.script).
assert FIELD == b"e", "lua/replay.lua writes the envelope field by name"


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _number(value: bytes | None, kind: type) -> Any:
    try:
        return kind(value.decode()) if value is not None else None
    except ValueError:
        return None


# -- dead letters ------------------------------------------------------------------------------


@dataclass(slots=True)
class DeadLetter:
    #: Id of the entry in the dead-letter stream (what `spark dlq` takes as --id).
    id: str
    raw: bytes
    error: Any = None
    deliveries: int | None = None
    consumer: str | None = None
    #: Epoch seconds it was dead-lettered.
    at: float | None = None
    #: Id it had on the request stream.
    entry_id: str | None = None
    #: The request, or None when the envelope itself was malformed (it cannot be replayed).
    envelope: Envelope | None = None

    @classmethod
    def from_entry(cls, entry_id: bytes, fields: dict[bytes, bytes]) -> DeadLetter:
        raw = fields.get(FIELD) or b""
        try:
            envelope = Envelope.decode(raw)
        except InvalidRequestError:
            envelope = None
        try:
            error = orjson.loads(fields[b"error"]) if b"error" in fields else None
        except orjson.JSONDecodeError:
            error = _text(fields[b"error"])
        return cls(
            id=_text(entry_id),
            raw=raw,
            error=error,
            deliveries=_number(fields.get(b"deliveries"), int),
            consumer=_text(fields.get(b"consumer")),
            at=_number(fields.get(b"at"), float),
            entry_id=_text(fields.get(b"entry_id")),
            envelope=envelope,
        )

    @property
    def method(self) -> str | None:
        return self.envelope.method if self.envelope is not None else None

    @property
    def error_message(self) -> str:
        if isinstance(self.error, dict):
            return str(self.error.get("message", ""))
        return "" if self.error is None else str(self.error)

    def to_dict(self) -> dict[str, Any]:
        env = self.envelope
        return {
            "id": self.id,
            "entry_id": self.entry_id,
            "method": self.method,
            "request_id": env.id if env else None,
            "params": env.params if env else None,
            "idempotency_key": env.idempotency_key if env else None,
            "error": self.error,
            "deliveries": self.deliveries,
            "consumer": self.consumer,
            "at": self.at,
            "replayable": env is not None,
            "raw": None if env else self.raw.decode(errors="replace"),
        }


async def dead_count(redis: aioredis.Redis, service: str) -> int:
    return await redis.xlen(ServiceKeys.for_service(service).dead)


async def dead_letters(
    redis: aioredis.Redis, service: str, count: int = 100, after: str | None = None
) -> list[DeadLetter]:
    """The oldest `count` dead letters (after id `after`, exclusive)."""
    start = f"({after}" if after else "-"
    rows = await redis.xrange(ServiceKeys.for_service(service).dead, min=start, count=count)
    return [DeadLetter.from_entry(i, f) for i, f in rows]


async def dead_letters_by_id(
    redis: aioredis.Redis, service: str, ids: Iterable[str]
) -> tuple[list[DeadLetter], list[str]]:
    """(found, missing) for the given dead-letter ids."""
    ids = list(dict.fromkeys(ids))
    if not ids:
        return [], []
    dead = ServiceKeys.for_service(service).dead
    pipe = redis.pipeline(transaction=False)
    for i in ids:
        pipe.xrange(dead, min=i, max=i, count=1)
    answers = await pipe.execute(raise_on_error=False)
    found, missing = [], []
    for i, rows in zip(ids, answers, strict=True):
        if isinstance(rows, list) and rows:
            found.append(DeadLetter.from_entry(*rows[0]))
        else:
            missing.append(i)
    return found, missing


def replay_envelope(letter: DeadLetter, timeout: float, now: float | None = None) -> bytes:
    """The request to enqueue again: a notification with a fresh deadline."""
    env = letter.envelope
    if env is None:
        raise ValueError(f"dead letter {letter.id} has a malformed envelope")
    now = time.time() if now is None else now
    return Envelope(
        id=env.id,
        method=env.method,
        params=env.params,
        reply_to=None,
        deadline=now + timeout,
        idempotency_key=env.idempotency_key,
        state=env.state,
        enqueued_at=now,
        client=None,
        trace=env.trace,
    ).encode()


@dataclass(slots=True)
class ReplayReport:
    #: (dead-letter id, new request entry id) of every request put back.
    replayed: list[tuple[str, str]] = field(default_factory=list)
    #: Ids asked for that are not (or no longer) in the dead-letter stream.
    missing: list[str] = field(default_factory=list)
    #: Ids left where they are because their envelope is malformed.
    malformed: list[str] = field(default_factory=list)
    #: The service's backlog was full: the replay stopped there.
    backlog_full: bool = False
    #: Dead letters seen but not replayed because the replay stopped.
    left: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "replayed": len(self.replayed),
            "ids": [{"dead_id": d, "entry_id": e} for d, e in self.replayed],
            "missing": self.missing,
            "malformed": self.malformed,
            "backlog_full": self.backlog_full,
            "left": self.left,
        }


class Replayer:
    """Moves dead letters of one service back to its request stream, batch by batch."""

    def __init__(
        self,
        redis: aioredis.Redis,
        service: str,
        *,
        timeout: float = DEFAULT_REPLAY_TIMEOUT,
        max_backlog: int = DEFAULT_MAX_BACKLOG,
    ):
        self.redis = redis
        self.keys = ServiceKeys.for_service(service)
        self.timeout = timeout
        self.max_backlog = max_backlog
        self._script = script(redis, "replay")

    async def move(self, letters: list[DeadLetter], report: ReplayReport) -> int:
        """Replay `letters` in order; returns how many were handled (all unless the backlog
        filled up, in which case `report.backlog_full` is set)."""
        now = time.time()
        todo: list[DeadLetter] = []
        for letter in letters:
            if letter.envelope is None:
                report.malformed.append(letter.id)
            else:
                todo.append(letter)
        if not todo:
            return len(letters)
        args: list[Any] = [self.max_backlog]
        for letter in todo:
            args += [letter.id, replay_envelope(letter, self.timeout, now)]
        answers = await self._script(keys=[self.keys.requests, self.keys.dead], args=args)
        for letter, answer in zip(todo, answers, strict=True):
            if answer == 0:
                report.backlog_full = True
            elif answer == -1:
                report.missing.append(letter.id)
            else:
                report.replayed.append((letter.id, _text(answer)))
        refused = sum(1 for a in answers if a == 0)
        report.left += refused
        return len(letters) - refused

    async def replay_ids(
        self, ids: Iterable[str], progress: Callable[[int, int], None] | None = None
    ) -> ReplayReport:
        report = ReplayReport()
        letters, report.missing = await dead_letters_by_id(self.redis, self.keys.service, ids)
        total = len(letters)
        done = 0
        for i in range(0, total, REPLAY_BATCH):
            batch = letters[i : i + REPLAY_BATCH]
            done += await self.move(batch, report)
            if progress is not None:
                progress(done, total)
            if report.backlog_full:
                report.left += total - i - len(batch)
                break
        return report

    async def replay_all(self, progress: Callable[[int, int], None] | None = None) -> ReplayReport:
        """Every dead letter there is now (those added while replaying are left alone)."""
        report = ReplayReport()
        total = await self.redis.xlen(self.keys.dead)
        last = await self.redis.xrevrange(self.keys.dead, count=1)
        if not last:
            return report
        stop_at = _text(last[0][0])
        after: str | None = None
        done = 0
        while True:
            letters = await dead_letters(self.redis, self.keys.service, REPLAY_BATCH, after)
            letters = [x for x in letters if _id_le(x.id, stop_at)]
            if not letters:
                break
            done += await self.move(letters, report)
            if progress is not None:
                progress(done, total)
            if report.backlog_full:
                report.left = await self.redis.xlen(self.keys.dead) - len(report.malformed)
                break
            after = letters[-1].id
        return report


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _id_le(a: str, b: str) -> bool:
    return _id_key(a) <= _id_key(b)


async def purge(redis: aioredis.Redis, service: str, ids: Iterable[str] | None = None) -> int:
    """Delete the given dead letters (all of them when `ids` is None); returns how many."""
    dead = ServiceKeys.for_service(service).dead
    if ids is None:
        pipe = redis.pipeline(transaction=True)
        pipe.xlen(dead)
        pipe.delete(dead)
        count, _ = await pipe.execute()
        return count
    ids = list(dict.fromkeys(ids))
    return await redis.xdel(dead, *ids) if ids else 0


# -- status --------------------------------------------------------------------------------------


@dataclass(slots=True)
class ServiceStatus:
    service: str
    workers: int
    #: Handlers running now, as the workers last reported.
    inflight: int
    #: Requests not finished (waiting + being worked on).
    backlog: int
    #: Requests delivered to a worker and not finished.
    pending: int
    dead: int
    #: Requests finished per second, from the workers' heartbeats; None while unknown.
    rate: float | None = None
    worker_info: dict[str, dict] = field(default_factory=dict)
    #: Seconds the oldest unfinished request has been on the stream (Redis's clock).
    oldest_age: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "workers": self.workers,
            "inflight": self.inflight,
            "backlog": self.backlog,
            "pending": self.pending,
            "dead": self.dead,
            "rate": None if self.rate is None else round(self.rate, 3),
            "oldest_age": None if self.oldest_age is None else round(self.oldest_age, 3),
        }


async def service_status(redis: aioredis.Redis, service: str) -> ServiceStatus:
    """Live workers and stream figures of one service.

    Unlike `ServiceQueue.stats`, a request stream without its consumer group (requests sent
    or replayed before any worker started) still shows its backlog.
    """
    keys = ServiceKeys.for_service(service)
    pipe = redis.pipeline(transaction=False)
    pipe.xlen(keys.requests)
    pipe.xlen(keys.dead)
    pipe.xpending(keys.requests, GROUP)
    # Finished entries are deleted, so the first entry is the oldest unfinished request;
    # its id is a Redis timestamp, compared with Redis's own clock.
    pipe.xrange(keys.requests, count=1)
    backlog, dead, pending, first = await pipe.execute(raise_on_error=False)
    for value in (backlog, dead):
        if isinstance(value, Exception):
            raise value
    oldest_age = None
    if isinstance(first, list) and first:
        # Not in the pipeline: a cluster refuses TIME there (any node's clock will do).
        now = await redis.time()
        entry_id = first[0][0]
        entry_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        now_ms = int(now[0]) * 1000 + int(now[1]) // 1000
        oldest_age = max(now_ms - int(entry_id.split("-")[0]), 0) / 1000
    pending = pending["pending"] if isinstance(pending, dict) and pending else 0
    workers = await registry.live_workers(redis, keys)
    inflight = sum(int(i.get("inflight") or 0) for i in workers.values())
    return ServiceStatus(
        service=service,
        workers=len(workers),
        inflight=inflight,
        backlog=backlog,
        pending=pending,
        dead=dead,
        worker_info=workers,
        oldest_age=oldest_age,
    )


class ThroughputMeter:
    """Requests per second per service, from the `processed` counters in worker heartbeats.

    A worker's rate is known once two of its heartbeats have been seen: the difference of
    its counters over the difference of their times. Workers report every heartbeat
    interval (2 s by default), so a first figure takes up to that long.
    """

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], tuple[int, float]] = {}
        self._rate: dict[tuple[str, str], float] = {}

    def observe(self, service: str, workers: dict[str, dict]) -> None:
        for name, info in workers.items():
            processed, at = info.get("processed"), info.get("at")
            if not isinstance(processed, int) or not isinstance(at, int | float):
                continue
            key = (service, name)
            prev = self._last.get(key)
            if prev is not None and at <= prev[1]:
                continue
            if prev is not None and processed >= prev[0]:
                self._rate[key] = (processed - prev[0]) / (at - prev[1])
            self._last[key] = (processed, at)
        for key in [k for k in self._last if k[0] == service and k[1] not in workers]:
            self._last.pop(key, None)
            self._rate.pop(key, None)

    def known(self, service: str, workers: Iterable[str]) -> bool:
        """Whether every one of `workers` has a rate."""
        return all((service, w) in self._rate for w in workers)

    def rate(self, service: str) -> float | None:
        rates = [r for (s, _w), r in self._rate.items() if s == service]
        return sum(rates) if rates else None


# -- forgetting a service ----------------------------------------------------------------------


@dataclass(slots=True)
class ForgetReport:
    service: str
    #: Whether it was known at all (listed in the services set, or with any key).
    known: bool
    #: Live workers found: a service with live workers is not forgotten.
    live: int = 0
    #: Requests and dead letters deleted with it (only with `purge`).
    deleted_requests: int = 0
    deleted_dead: int = 0
    #: Requests or dead letters that kept it from being forgotten (without `purge`).
    backlog: int = 0
    dead: int = 0

    @property
    def forgotten(self) -> bool:
        return self.known and not self.live and not self.backlog and not self.dead

    def to_dict(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "known": self.known,
            "forgotten": self.forgotten,
            "live_workers": self.live,
            "backlog": self.backlog,
            "dead": self.dead,
            "deleted_requests": self.deleted_requests,
            "deleted_dead": self.deleted_dead,
        }


async def forget(redis: aioredis.Redis, service: str, *, purge: bool = False) -> ForgetReport:
    """Remove a service that has no live workers: its name from the services set, its
    worker registry, and (with `purge`) its request and dead-letter streams.

    Without `purge` a service that still holds requests or dead letters is left alone (they
    would be lost), and so is one with a live worker (it would register again anyway).
    """
    keys = ServiceKeys.for_service(service)
    pipe = redis.pipeline(transaction=False)
    pipe.sismember(SERVICES, service)
    pipe.exists(keys.requests, keys.dead, keys.workers, keys.worker_info)
    pipe.xlen(keys.requests)
    pipe.xlen(keys.dead)
    listed, existing, backlog, dead = await pipe.execute()
    report = ForgetReport(service, known=bool(listed) or bool(existing))
    if not report.known:
        return report
    report.live = await registry.live_count(redis, keys)
    if report.live:
        return report
    if not purge and (backlog or dead):
        report.backlog, report.dead = backlog, dead
        return report
    pipe = redis.pipeline(transaction=False)
    pipe.srem(SERVICES, service)
    pipe.delete(keys.workers, keys.worker_info)
    if purge:
        pipe.delete(keys.requests)
        pipe.delete(keys.dead)
    else:
        # An empty request stream still holds the consumer group: drop it with the service.
        pipe.delete(keys.requests)
    await pipe.execute()
    if purge:
        report.deleted_requests, report.deleted_dead = backlog, dead
    return report


async def is_known(redis: aioredis.Redis, service: str) -> bool:
    """Whether `service` ever had a worker or has any stream (for "unknown service" errors)."""
    keys = ServiceKeys.for_service(service)
    pipe = redis.pipeline(transaction=False)
    pipe.sismember(SERVICES, service)
    pipe.exists(keys.requests, keys.dead, keys.workers)
    listed, existing = await pipe.execute()
    return bool(listed) or bool(existing)
