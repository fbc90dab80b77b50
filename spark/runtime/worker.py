"""A worker: serves one service's request stream with up to `concurrency` handlers at once.

Life of an entry: read (only as many as there are free slots) -> checks (malformed, too
many deliveries, expired, already answered) -> handler under the request's deadline ->
reply written -> entry acknowledged and deleted. Replies and acks of entries that finish
together go out in one pipeline each. While a handler runs, its entry's lease is renewed
so other workers do not reclaim it; entries of a worker that died go idle and are
reclaimed by the others after `reclaim_after` seconds.

Cancellation: every worker listens on its service's cancel channel (spark.broker.cancel).
A cancel for a request whose handler is running here cancels the handler task; the request
is answered with CancelledError (-32006), its idempotency key released, and the entry
acknowledged (it is not run again). A cancel for a request not yet read is remembered for
`CANCEL_MEMORY` seconds, so the request is answered the same way without running.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis

from spark.aio import Batcher, cancel_and_wait, timeout
from spark.broker import (
    UNREACHABLE,
    Entry,
    Envelope,
    ServiceQueue,
    connect,
    is_memory,
    registry,
    replies,
    resolve_url,
)
from spark.broker import cancel as cancelling
from spark.broker.envelope import encode_error, encode_result, reply_address, retag_reply
from spark.broker.keys import default_service_name
from spark.broker.notify import Notification, NotificationListener
from spark.broker.retrying import until_reachable, while_unreachable
from spark.context import CallInfo, current_call
from spark.errors import (
    CancelledError,
    DeadLetteredError,
    InternalError,
    InvalidRequestError,
    RpcError,
    RpcTimeoutError,
)
from spark.runtime.discovery import answering_discover
from spark.runtime.host import ServiceHost
from spark.runtime.metrics import WorkerMetrics
from spark.runtime.observe import WorkerObserver

log = logging.getLogger("spark.worker")

#: Blocking reads on the embedded broker are kept short (see _read_loop).
EMBEDDED_READ_BLOCK_MS = 100

#: What a worker serves: (method, params, call) -> JSON-able result, raising RpcError.
Handler = Callable[[str, Any, CallInfo], Awaitable[Any]]

#: Seconds a cancel for a request this worker is not running is remembered (the request
#: may still be queued); request ids are never reused by a client, so this only bounds memory.
CANCEL_MEMORY = 120.0


@dataclass(slots=True)
class WorkerConfig:
    service: str
    concurrency: int = 16
    #: Seconds an entry may sit unrenewed before live workers take it over.
    reclaim_after: float = 30.0
    #: Deliveries after which an entry is dead-lettered instead of run again.
    max_deliveries: int = 3
    #: Seconds SIGTERM waits for in-flight handlers before leaving them to be reclaimed.
    grace: float = 30.0
    heartbeat_interval: float = 2.0
    #: Seconds stored replies answer repeats of an idempotency key.
    idempotency_ttl: int = 3600
    reply_ttl: int = replies.DEFAULT_REPLY_TTL
    #: Deadline given to envelopes that arrive without one (written by a foreign producer).
    default_timeout: float = 300.0
    read_block_ms: int = 1000
    #: Port answering Prometheus scrapes (0 picks a free one); None serves no metrics.
    metrics_port: int | None = None
    metrics_host: str = "0.0.0.0"
    consumer: str = field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    )


@dataclass(slots=True)
class _Done:
    entry: Entry
    reply_to: str | None
    payload: bytes | None
    #: Idempotency key to store the reply under, or to release when the reply is not kept.
    store_key: str | None = None
    keep: bool = True
    #: Until when a failed reply write is retried (the caller stops waiting then).
    deadline: float = 0.0


class Worker:
    def __init__(self, handler: Handler, config: WorkerConfig, url: str):
        self.handler = handler
        self.config = config
        self.url = url
        self.redis: aioredis.Redis | None = None
        self._reader: aioredis.Redis | None = None
        self._writer: aioredis.Redis | None = None
        self.queue: ServiceQueue | None = None
        self._inflight: dict[bytes, asyncio.Task] = {}
        #: Requests whose handler may be cancelled now, by (reply_to, id) and (reply_to, key).
        self._by_request: dict[tuple[str, str], bytes] = {}
        self._by_key: dict[tuple[str, str], set[bytes]] = {}
        self._cancel_requested: set[bytes] = set()
        #: Idempotency keys claimed by requests now answering (released if cancelled).
        self._claimed: dict[bytes, str] = {}
        #: (reply_to, id) of cancelled requests not running here -> forget after (monotonic).
        self._cancelled: dict[tuple[str, str], float] = {}
        self._cancels: NotificationListener | None = None
        #: Requests cancelled by their callers (counted in heartbeats as failures too).
        self.cancelled = 0
        self._slot_free = asyncio.Event()
        self._writes: Batcher[_Done, bool] = Batcher(self._write)
        self._stopping = asyncio.Event()
        self.ready = asyncio.Event()
        #: Running a reclaimed entry alone (see _reclaim_loop): read nothing new meanwhile.
        self._isolating = False
        #: "serving", then "draining" once it stopped reading (reported in heartbeats).
        self.state = "serving"
        self.processed = 0
        self.failed = 0
        self.started_at = time.time()
        #: Counts, latencies, spans and request log lines of answered requests.
        self.observer = WorkerObserver(config.service, config.consumer)
        self.metrics: WorkerMetrics | None = None
        #: Entries of the request stream not finished, at the last heartbeat (with metrics).
        self.backlog: int | None = None

    @property
    def consumer(self) -> str:
        return self.config.consumer

    @property
    def free_slots(self) -> int:
        if self._isolating:
            return 0
        return self.config.concurrency - len(self._inflight)

    def stop(self) -> None:
        """Stop reading; `serve()` then drains in-flight work and returns."""
        self._stopping.set()

    async def serve(self) -> None:
        cfg = self.config
        self.redis = connect(self.url, max_connections=8)
        # Blocking reads hold their connection for the whole wait: give them their own.
        self._reader = connect(
            self.url,
            max_connections=1,
            socket_timeout=cfg.read_block_ms / 1000 + 10,
            dedicated=True,
        )
        self.queue = ServiceQueue(self.redis, cfg.service)
        self._embedded = is_memory(self.url)
        if self._embedded:
            cfg.read_block_ms = min(cfg.read_block_ms, EMBEDDED_READ_BLOCK_MS)
        # Replies and acks go out from one task, one pipeline at a time: a dedicated
        # connection spares the pool's bookkeeping on the path every request takes.
        self._writer = connect(self.url, max_connections=1, dedicated=True)
        self._writer_queue = ServiceQueue(self._writer, cfg.service)
        if cfg.metrics_port is not None:
            self.metrics = WorkerMetrics(
                cfg.service, self.observer.stats, lambda: len(self._inflight), lambda: self.backlog
            )
            port = self.metrics.serve(cfg.metrics_port, cfg.metrics_host)
            log.info("worker %s metrics on port %d", self.consumer, port)
        async for attempt in while_unreachable():
            with attempt:
                await self.queue.ensure_group()
                await self._beat()
        self._cancels = NotificationListener(
            self.url, self._on_cancel, channels=[self.queue.keys.cancel]
        )
        await self._cancels.start(timeout=5.0)
        log.info(
            "worker %s serving %r (concurrency %d)", self.consumer, cfg.service, cfg.concurrency
        )
        self.ready.set()
        side = [
            asyncio.create_task(self._heartbeat_loop(), name="spark-heartbeat"),
            asyncio.create_task(self._lease_loop(), name="spark-lease"),
            asyncio.create_task(self._reclaim_loop(), name="spark-reclaim"),
        ]
        try:
            await self._read_loop()
        finally:
            self.state = "draining"
            with contextlib.suppress(*UNREACHABLE):
                await self._beat()
            await self._drain()
            self._stopping.set()
            await cancel_and_wait(*side)
            await self._cancels.aclose()
            with contextlib.suppress(*UNREACHABLE):
                await registry.leave(self.redis, self.queue.keys, self.consumer)
            if self.metrics is not None:
                self.metrics.close()
            for client in (self._reader, self._writer, self.redis):
                await client.aclose()
            log.info("worker %s stopped after %d requests", self.consumer, self.processed)

    # -- reading -----------------------------------------------------------------------

    async def _read_loop(self) -> None:
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                if self.free_slots <= 0:
                    self._slot_free.clear()
                    await self._wait_stopping_or(self._slot_free.wait())
                    continue
                read = asyncio.ensure_future(
                    self.queue.read(
                        self._reader, self.consumer, self.free_slots, self.config.read_block_ms
                    )
                )
                await asyncio.wait({read, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if not read.done():
                    if self._embedded:
                        # fakeredis goes on serving a cancelled blocking read: it would take
                        # the next entry for this stopped consumer. Its blocks are short:
                        # let the read finish and run what it brings.
                        await asyncio.wait({read})
                    else:
                        # Stop reading now rather than after the block times out; what the
                        # abandoned read was given is in our pending list.
                        await cancel_and_wait(read)
                        await self._adopt_own_pending()
                        return
                try:
                    entries = read.result()
                except UNREACHABLE as exc:
                    log.warning("read failed (%s); retrying", exc)
                    await self._wait_stopping_or(asyncio.sleep(0.5))
                    continue
                for entry in entries:
                    self._start(entry)
        finally:
            stopping.cancel()

    async def _adopt_own_pending(self) -> None:
        """Run what an abandoned read may have delivered to us without our seeing it."""
        try:
            entries = await self.queue.own_pending(self.consumer)
        except UNREACHABLE as exc:
            log.warning("could not check own pending entries (%s); they will be reclaimed", exc)
            return
        for entry in entries:
            if entry.entry_id not in self._inflight:
                self._start(entry)

    async def _wait_stopping_or(self, aw: Awaitable) -> None:
        waiter = asyncio.ensure_future(aw)
        stopper = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for t in (waiter, stopper):
            t.cancel()

    def _start(self, entry: Entry) -> None:
        task = asyncio.create_task(self._run(entry))
        self._inflight[entry.entry_id] = task

    # -- running one entry ---------------------------------------------------------------

    async def _run(self, entry: Entry) -> None:
        try:
            done = await self._answer(entry)
            if done is not None:
                await self._reply(done)
        except Exception:
            # Only a bug in this module gets here; the entry stays pending and is reclaimed.
            log.exception("worker failed on entry %r", entry.entry_id)
        finally:
            self._inflight.pop(entry.entry_id, None)
            self._slot_free.set()

    async def _reply(self, done: _Done) -> None:
        """Write the reply, then acknowledge; retry a write Redis refused until the deadline.

        Meanwhile the entry stays in flight, so its lease is renewed and nobody else runs
        it. Past the caller's deadline nobody waits for the reply: the entry is left
        pending, to be reclaimed and answered (or dead-lettered) like any entry of a
        worker that failed.
        """
        delay = 0.05
        while not await self._writes.submit(done):
            if time.time() >= done.deadline:
                log.error(
                    "giving up writing the reply for %r of %r",
                    done.entry.entry_id,
                    self.config.service,
                )
                return
            log.warning(
                "reply for %r of %r not written; retrying", done.entry.entry_id, self.config.service
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _answer(self, entry: Entry) -> _Done | None:
        cfg = self.config
        try:
            env = Envelope.decode(entry.raw or b"")
        except InvalidRequestError as exc:
            await self._dead_letter(entry, exc)
            address = reply_address(entry.raw or b"")
            if address is None:
                return None
            return _Done(entry, address[1], encode_error(address[0], exc))
        if entry.deliveries > cfg.max_deliveries:
            err = DeadLetteredError(
                f"request delivered {entry.deliveries - 1} times without an answer; dead-lettered",
                data={
                    "service": cfg.service,
                    "deliveries": entry.deliveries - 1,
                    "last_error": "the worker handling it stopped before answering",
                },
            )
            await self._dead_letter(entry, err)
            return _Done(entry, env.reply_to, encode_error(env.id, err))
        deadline = env.deadline if env.deadline is not None else time.time() + cfg.default_timeout
        if time.time() >= deadline:
            err = RpcTimeoutError(
                "deadline passed before the request was run",
                data={"service": cfg.service, "method": env.method},
            )
            return _Done(entry, env.reply_to, encode_error(env.id, err))

        if env.reply_to is None:
            return await self._answer_valid(entry, env, deadline)
        if self._cancelled.pop((env.reply_to, env.id), None) is not None:
            return self._cancelled_done(entry, env, None, deadline)
        self._track(entry, env)
        try:
            return await self._answer_valid(entry, env, deadline)
        except asyncio.CancelledError:
            if entry.entry_id not in self._cancel_requested or self._stopping.is_set():
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return self._cancelled_done(entry, env, self._claimed.get(entry.entry_id), deadline)
        finally:
            self._untrack(entry, env)

    async def _answer_valid(self, entry: Entry, env: Envelope, deadline: float) -> _Done:
        store_key = None
        if env.idempotency_key is not None:
            key = self.queue.keys.result(env.idempotency_key)
            stored = await self._claim_key(key, entry, deadline)
            if isinstance(stored, bytes):
                return _Done(entry, env.reply_to, retag_reply(stored, env.id), deadline=deadline)
            if isinstance(stored, RpcError):
                return _Done(entry, env.reply_to, encode_error(env.id, stored))
            store_key = key
            # Ours now: a cancel from here on releases it (see _cancelled_done).
            self._claimed[entry.entry_id] = key

        call = CallInfo(
            request_id=env.id,
            service=self.config.service,
            method=env.method,
            client_id=env.client or env.reply_to,
            deadline=deadline,
            idempotency_key=env.idempotency_key,
            state_namespace=env.state,
            delivery=entry.deliveries,
        )
        payload, keep = await self.observer.run(env, call, self._invoke(env, call, deadline))
        return _Done(entry, env.reply_to, payload, store_key, keep, deadline)

    # -- cancellation --------------------------------------------------------------------

    def _track(self, entry: Entry, env: Envelope) -> None:
        self._by_request[(env.reply_to, env.id)] = entry.entry_id
        if env.idempotency_key is not None:
            self._by_key.setdefault((env.reply_to, env.idempotency_key), set()).add(entry.entry_id)

    def _untrack(self, entry: Entry, env: Envelope) -> None:
        self._by_request.pop((env.reply_to, env.id), None)
        self._claimed.pop(entry.entry_id, None)
        self._cancel_requested.discard(entry.entry_id)
        if env.idempotency_key is not None:
            group = self._by_key.get((env.reply_to, env.idempotency_key))
            if group is not None:
                group.discard(entry.entry_id)
                if not group:
                    del self._by_key[(env.reply_to, env.idempotency_key)]

    def _cancelled_done(
        self, entry: Entry, env: Envelope, claimed_key: str | None, deadline: float
    ) -> _Done:
        self.cancelled += 1
        self.observer.stats.cancelled += 1
        err = CancelledError(
            "the caller cancelled the request",
            data={"service": self.config.service, "method": env.method},
        )
        # keep=False releases the idempotency key this request held, so a waiting repeat runs.
        return _Done(entry, env.reply_to, encode_error(env.id, err), claimed_key, False, deadline)

    def _on_cancel(self, note: Notification) -> None:
        if note.method != cancelling.METHOD:
            return
        now = time.monotonic()
        for item in cancelling.parse(note.params):
            targets: set[bytes] = set()
            if item.request_id is not None:
                entry_id = self._by_request.get((item.reply_to, item.request_id))
                if entry_id is not None:
                    targets.add(entry_id)
                else:
                    self._cancelled[(item.reply_to, item.request_id)] = now + CANCEL_MEMORY
            if item.idempotency_key is not None:
                targets |= self._by_key.get((item.reply_to, item.idempotency_key), set())
            for entry_id in targets:
                task = self._inflight.get(entry_id)
                if task is not None and entry_id not in self._cancel_requested:
                    self._cancel_requested.add(entry_id)
                    task.cancel()
        if len(self._cancelled) > 1000 or (self._cancelled and now > min(self._cancelled.values())):
            self._cancelled = {k: t for k, t in self._cancelled.items() if t > now}

    async def _invoke(self, env: Envelope, call: CallInfo, deadline: float) -> tuple[bytes, bool]:
        """The reply, and whether a repeat of the request may be answered with it.

        A timeout, or an error whose code says "try again", is not kept: the caller's retry
        (with the same idempotency key) runs again.
        """
        token = current_call.set(call)
        try:
            with timeout(deadline - time.time()) as scope:
                result = await self.handler(env.method, env.params, call)
            return encode_result(env.id, result), True
        except RpcError as exc:
            self.failed += 1
            # "Try again" answers (timeout, overloaded, unavailable) are not final.
            return encode_error(env.id, exc), not (
                isinstance(exc, RpcTimeoutError) or exc.retryable
            )
        except TimeoutError:
            self.failed += 1
            if scope.expired():
                err = RpcTimeoutError(
                    "handler did not finish before the request's deadline",
                    data={"service": self.config.service, "method": env.method},
                )
            else:
                log.exception("handler %s.%s raised", self.config.service, env.method)
                err = InternalError()
            return encode_error(env.id, err), not scope.expired()
        except (TypeError, orjson.JSONEncodeError) as exc:
            self.failed += 1
            log.exception(
                "handler %s.%s failed or returned a value that is not JSON",
                self.config.service,
                env.method,
            )
            return encode_error(env.id, InternalError(data={"type": type(exc).__name__})), True
        except Exception:
            self.failed += 1
            log.exception("handler %s.%s raised", self.config.service, env.method)
            return encode_error(env.id, InternalError()), True
        finally:
            current_call.reset(token)

    async def _claim_key(self, key: str, entry: Entry, deadline: float) -> bytes | RpcError | None:
        """None: run the handler. bytes: the stored reply. RpcError: gave up waiting."""
        owner = entry.entry_id
        lease = self.config.reclaim_after * 2
        while True:
            stored = await replies.claim_idempotency(self.redis, key, owner, lease)
            if stored is None or stored == replies.RUNNING + owner:
                return None
            if not stored.startswith(replies.RUNNING):
                return stored
            # The same key is running elsewhere: wait for its reply instead of running twice.
            if time.time() >= deadline:
                return RpcTimeoutError(
                    "an earlier request with this idempotency key is still running"
                )
            await asyncio.sleep(0.05)

    async def _dead_letter(self, entry: Entry, err: RpcError) -> None:
        log.error("dead-lettering %r of %r: %s", entry.entry_id, self.config.service, err)
        self.observer.stats.dead_lettered += 1
        async for attempt in while_unreachable():
            with attempt:
                await self.queue.dead_letter(entry, err.to_dict(), self.consumer)

    # -- replies and acks ----------------------------------------------------------------

    async def _write(self, batch: list[_Done]) -> list[bool]:
        """Replies (and stored results) in one pipeline, then acks for those written."""
        cfg = self.config
        with_reply = [d for d in batch if d.reply_to is not None and d.payload is not None]
        stored = [
            (d.store_key, d.payload if d.keep else None, cfg.idempotency_ttl)
            for d in batch
            if d.store_key
        ]
        ok = await until_reachable(
            replies.push,
            self._writer,
            [(d.reply_to, d.payload) for d in with_reply],
            stored,
            ttl=cfg.reply_ttl,
        )
        written = {id(d) for d, good in zip(with_reply, ok, strict=True) if good}
        finished = [d.reply_to is None or id(d) in written for d in batch]
        await until_reachable(
            self._writer_queue.finish,
            [d.entry.entry_id for d, fin in zip(batch, finished, strict=True) if fin],
        )
        self.processed += sum(finished)
        return finished

    # -- leases, reclaiming, heartbeats ------------------------------------------------------

    async def _lease_loop(self) -> None:
        interval = max(self.config.reclaim_after / 3, 0.05)
        while True:
            await asyncio.sleep(interval)
            if self._inflight:
                try:
                    await self.queue.renew(self.consumer, list(self._inflight))
                except UNREACHABLE as exc:
                    log.warning("lease renewal failed: %s", exc)

    async def _reclaim_loop(self) -> None:
        interval = max(self.config.reclaim_after / 2, 0.05)
        min_idle_ms = int(self.config.reclaim_after * 1000)
        while not self._stopping.is_set():
            await asyncio.sleep(interval)
            if self._stopping.is_set():
                continue
            try:
                if await self.queue.reclaimable(min_idle_ms):
                    await self._run_reclaimed_alone(min_idle_ms)
            except UNREACHABLE as exc:
                log.warning("reclaim failed: %s", exc)
            finally:
                self._isolating = False
                self._slot_free.set()

    async def _run_reclaimed_alone(self, min_idle_ms: int) -> None:
        """Take over a dead worker's entries one at a time, each with nothing else running.

        One of them may be what killed that worker. Run alongside other requests, a poison
        entry takes them down with it, they are delivered again and again, and innocent
        requests end up dead-lettered with it. Run alone, it harms nobody: only it reaches
        `max_deliveries`. This costs throughput only while there is something to reclaim.
        """
        self._isolating = True
        while self._inflight and not self._stopping.is_set():
            self._slot_free.clear()
            await self._wait_stopping_or(self._slot_free.wait())
        while not self._stopping.is_set():
            entries = await self.queue.reclaim(self.consumer, min_idle_ms, 1)
            if not entries:
                return
            entry = entries[0]
            self.observer.stats.reclaimed += 1
            log.warning(
                "reclaimed %r of %r (delivery %d), running it alone",
                entry.entry_id,
                self.config.service,
                entry.deliveries,
            )
            self._start(entry)
            await asyncio.wait({self._inflight[entry.entry_id]})

    async def _beat(self) -> None:
        cfg = self.config
        stats = self.observer.stats
        if self.metrics is not None:
            self.backlog = (await self.queue.stats())["backlog"]
        await registry.beat(
            self.redis,
            self.queue.keys,
            self.consumer,
            ttl=cfg.heartbeat_interval * 3,
            info={
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "concurrency": cfg.concurrency,
                "inflight": len(self._inflight),
                "state": self.state,
                "processed": self.processed,
                "failed": self.failed,
                "cancelled": self.cancelled,
                "started_at": self.started_at,
                "reclaimed": stats.reclaimed,
                "dead_lettered": stats.dead_lettered,
                "methods": stats.snapshot(),
            },
        )

    async def _heartbeat_loop(self) -> None:
        beats = 0
        while True:
            await asyncio.sleep(self.config.heartbeat_interval)
            try:
                await self._beat()
                beats += 1
                if beats % 15 == 0:
                    await registry.prune(
                        self.redis, self.queue.keys, grace=self.config.reclaim_after * 4
                    )
            except UNREACHABLE as exc:
                log.warning("heartbeat failed: %s", exc)

    # -- shutdown --------------------------------------------------------------------------

    async def _drain(self) -> None:
        tasks = list(self._inflight.values())
        if not tasks:
            return
        log.info("draining %d in-flight requests (grace %.1fs)", len(tasks), self.config.grace)
        _done, pending = await asyncio.wait(tasks, timeout=self.config.grace)
        if pending:
            # Unanswered and unacknowledged: live workers reclaim these entries.
            await cancel_and_wait(*pending)
            log.warning("left %d requests to be reclaimed after the grace period", len(pending))


def service_of(target: Any, service: str | None = None) -> str:
    return (
        service or getattr(target, "service", None) or default_service_name(type(target).__name__)
    )


async def run_worker(
    target: Any,
    *,
    service: str | None = None,
    url: str | None = None,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
    **options: Any,
) -> None:
    """Serve `target` (anything with `handle_rpc`: an RpcNode, a Node) until `stop` is set.

    The embedding and test entry point of `spark-worker`. `url` defaults to
    `$SPARK_REDIS_URL`, then the embedded broker. Cancelling the task stops it too; either
    way in-flight requests are drained first.
    """
    url = resolve_url(url)
    name = service_of(target, service)
    host = ServiceHost(url, service=name, threads=options.get("concurrency", 16))
    if hasattr(target, "runtime"):
        target.runtime = host
    if hasattr(target, "service"):
        # Served under this name: its notifications go to this service's clients.
        target.service = name
    await _hook(target, "on_start")
    handler = answering_discover(target.handle_rpc, target, name)
    worker = Worker(handler, WorkerConfig(service=name, **options), url)
    serving = asyncio.create_task(worker.serve())
    try:
        started = asyncio.create_task(worker.ready.wait())
        await asyncio.wait({serving, started}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if ready is not None and worker.ready.is_set():
            ready.set()
        # asyncio.wait, not `await serving`: cancelling us must drain the worker, not cancel it.
        waiters = {serving}
        if stop is not None:
            waiters.add(asyncio.create_task(stop.wait()))
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for t in waiters - {serving}:
            t.cancel()
    finally:
        worker.stop()
        await serving
        try:
            await _hook(target, "on_stop")
        finally:
            await host.aclose()


async def _hook(target: Any, name: str) -> None:
    """Call the target's lifecycle hook (`on_start` before serving, `on_stop` after draining)."""
    hook = getattr(target, name, None)
    if hook is not None:
        result = hook()
        if inspect.isawaitable(result):
            await result
