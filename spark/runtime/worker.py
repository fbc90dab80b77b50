"""A worker: serves one service's request stream with up to `concurrency` handlers at once.

Life of an entry: read (only as many as there are free slots) -> checks (malformed, too
many deliveries, expired, already answered) -> handler under the request's deadline ->
reply written -> entry acknowledged and deleted. Replies and acks of entries that finish
together go out in one pipeline each. While a handler runs, its entry's lease is renewed
so other workers do not reclaim it; entries of a worker that died go idle and are
reclaimed by the others after `reclaim_after` seconds, one at a time (see _run_reclaimed).

Cancellation: every worker listens on its service's cancel channel (spark.broker.cancel).
A cancel for a request whose handler is running here cancels the handler task; the request
is answered with CancelledError (-32006), its idempotency key released, and the entry
acknowledged (it is not run again). A cancel for a request not yet read is remembered for
`CANCEL_MEMORY` seconds, so the request is answered the same way without running.
"""

from __future__ import annotations

import asyncio
import contextlib
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

from spark.aio import cancel_and_wait, timeout
from spark.broker import (
    Entry,
    Envelope,
    ServiceQueue,
    connect,
    is_memory,
    presence,
    registry,
    replies,
    resolve_url,
)
from spark.broker import cancel as cancelling
from spark.broker.envelope import (
    MAX_TIMEOUT,
    encode_error,
    encode_result,
    reply_address,
    retag_reply,
)
from spark.broker.keys import default_service_name
from spark.broker.memory import memory_status
from spark.broker.notify import Notification, NotificationListener
from spark.broker.retrying import REDIS_ERRORS, Backoff, Stopped
from spark.context import CallInfo, current_call
from spark.errors import (
    CancelledError,
    DeadLetteredError,
    InternalError,
    InvalidRequestError,
    RpcError,
    RpcTimeoutError,
)
from spark.runtime.cancellation import CANCEL_MEMORY, CancellationIndex
from spark.runtime.discovery import answering_discover
from spark.runtime.host import (
    Servable,
    ServiceAware,
    ServiceHost,
    bind,
    call_on_start,
    call_on_stop,
)
from spark.runtime.idempotency import IdempotencyGate
from spark.runtime.lease import LeaseKeeper
from spark.runtime.metrics import WorkerMetrics
from spark.runtime.observe import WorkerObserver
from spark.runtime.presence import PresenceHooks, wants_presence
from spark.runtime.reply_writer import Done, ReplyWriter

log = logging.getLogger("spark.worker")

#: Blocking reads on the embedded broker are kept short (see _read_loop).
EMBEDDED_READ_BLOCK_MS = 100

#: What a worker serves: (method, params, call) -> JSON-able result, raising RpcError.
Handler = Callable[[str, Any, CallInfo], Awaitable[Any]]

__all__ = ["CANCEL_MEMORY", "Handler", "Worker", "WorkerConfig", "run_worker", "service_of"]


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


class Worker:
    def __init__(
        self,
        handler: Handler,
        config: WorkerConfig,
        url: str,
        *,
        on_presence: Callable[[Notification], None] | None = None,
    ):
        self.handler = handler
        #: Given the edges' "WebSocket client connected / left" messages (spark.broker.presence).
        self.on_presence = on_presence
        self.config = config
        self.url = url
        # Connected by serve().
        self.redis: aioredis.Redis
        self._reader: aioredis.Redis
        self._writer: aioredis.Redis
        self.queue: ServiceQueue
        self._inflight: dict[bytes, asyncio.Task[None]] = {}
        #: The worker's parts, each testable alone: which running request a cancel is for,
        #: idempotency keys, replies and acks, leases.
        self._cancellation = CancellationIndex()
        self._gate: IdempotencyGate | None = None
        self._replies = ReplyWriter(
            config.service, reply_ttl=config.reply_ttl, idempotency_ttl=config.idempotency_ttl
        )
        self._lease: LeaseKeeper | None = None
        self._cancels: NotificationListener | None = None
        #: Requests cancelled by their callers (counted in heartbeats as failures too).
        self.cancelled = 0
        #: Redis's clock minus ours (seconds), measured with every heartbeat: request
        #: budgets count from the stream entry's id, which Redis stamps (see _deadline_of).
        self.clock_offset = 0.0
        self._slot_free = asyncio.Event()
        self._stopping = asyncio.Event()
        #: The read in flight (stop() cancels it), and whether the broker is embedded.
        self._read: asyncio.Task[list[Entry]] | None = None
        self._embedded = is_memory(url)
        # One retry policy per loop, each with its own steady-rate log line.
        self._retry_start = Backoff("worker start", logger=log, stopping=self._stopping)
        self._retry_read = Backoff("reading requests", logger=log, stopping=self._stopping)
        self._retry_beat = Backoff("heartbeat", logger=log)
        self._retry_reclaim = Backoff("reclaiming", logger=log)
        self._retry_dead = Backoff("dead-lettering", logger=log, stopping=self._stopping)
        self.ready = asyncio.Event()
        #: Taking over a dead worker's entries (see _run_reclaimed): one slot is kept for
        #: them, and they run one at a time.
        self._reclaiming = False
        self._reclaimed: bytes | None = None
        #: "serving", then "draining" once it stopped reading (reported in heartbeats).
        self.state = "serving"
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
    def processed(self) -> int:
        """Requests answered and acknowledged."""
        return self._replies.processed

    @property
    def free_slots(self) -> int:
        # The kept slot counts once: reserved while no reclaimed entry runs in it.
        reserved = 1 if self._reclaiming and self._reclaimed not in self._inflight else 0
        return self.config.concurrency - len(self._inflight) - reserved

    def stop(self) -> None:
        """Stop reading; `serve()` then drains in-flight work and returns."""
        self._stopping.set()
        read = self._read
        if read is not None and not read.done() and not self._embedded:
            # Stop reading now rather than after the block times out; what the abandoned
            # read was given is in our pending list (see _read_loop). fakeredis goes on
            # serving a cancelled blocking read (it would take the next entry for this
            # stopped consumer): its blocks are short, so there the read is let finish.
            read.cancel()

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
        self._replies.open(self._writer)
        self._gate = IdempotencyGate(self.redis, self.queue.keys, cfg.reclaim_after * 2)
        self._lease = LeaseKeeper(
            self.queue,
            self.consumer,
            self._gate,
            lambda: list(self._inflight),
            reclaim_after=cfg.reclaim_after,
        )
        # One pub/sub connection for what callers and edges tell every worker of the service.
        channels = [self.queue.keys.cancel]
        if self.on_presence is not None:
            channels.append(self.queue.keys.sockets)
        self._cancels = NotificationListener(self.url, self._on_cancel, channels=channels)
        if cfg.metrics_port is not None:
            self.metrics = WorkerMetrics(
                cfg.service, self.observer.stats, lambda: len(self._inflight), lambda: self.backlog
            )
            port = self.metrics.serve(cfg.metrics_port, cfg.metrics_host)
            log.info("worker %s metrics on port %d", self.consumer, port)
        try:
            # Redis may be down (or refusing writes) at start: wait for it, but stop
            # promptly when asked to (SIGTERM, Ctrl-C) instead of only once it answers.
            await self._retry_start.call(self._start_up)
            await self._cancels.start(timeout=None)
            await self._wait_stopping_or(self._cancels.subscribed.wait(), timeout=5.0)
        except Stopped:
            await self._close_clients()
            log.info("worker %s stopped before it started serving", self.consumer)
            return
        log.info(
            "worker %s serving %r (concurrency %d)", self.consumer, cfg.service, cfg.concurrency
        )
        self.ready.set()
        side = [
            asyncio.create_task(self._heartbeat_loop(), name="spark-heartbeat"),
            asyncio.create_task(self._lease.run(), name="spark-lease"),
            asyncio.create_task(self._reclaim_loop(), name="spark-reclaim"),
        ]
        try:
            await self._read_loop()
        finally:
            self.state = "draining"
            # Best effort: a Redis refusing writes must not mask why we are stopping.
            with contextlib.suppress(*REDIS_ERRORS):
                await self._beat()
            await self._drain()
            self._stopping.set()
            await cancel_and_wait(*side)
            with contextlib.suppress(*REDIS_ERRORS):
                await registry.leave(self.redis, self.queue.keys, self.consumer)
            await self._close_clients()
            log.info("worker %s stopped after %d requests", self.consumer, self.processed)

    async def _start_up(self) -> None:
        await self.queue.ensure_group()
        await self._beat()
        memory = await memory_status(self.redis)
        if memory is not None and memory.evicts_spark_keys:
            log.warning(
                "Redis evicts keys when full (maxmemory-policy %s): it may silently drop "
                "request streams, consumer groups and stored replies; use noeviction "
                "(or volatile-*) for Spark's Redis",
                memory.policy,
            )

    async def _close_clients(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        if self._cancels is not None:
            await self._cancels.aclose()
        for client in (self._reader, self._writer, self.redis):
            await client.aclose()

    # -- reading -----------------------------------------------------------------------

    async def _read_loop(self) -> None:
        # The read is awaited directly (not beside a stop event): a read that returns takes
        # one loop turn to reach us. stop() cancels a read blocked in Redis.
        while not self._stopping.is_set():
            if self.free_slots <= 0:
                self._slot_free.clear()
                await self._wait_stopping_or(self._slot_free.wait())
                continue
            self._read = read = asyncio.ensure_future(
                self.queue.read(
                    self._reader, self.consumer, self.free_slots, self.config.read_block_ms
                )
            )
            try:
                entries = await read
            except asyncio.CancelledError:
                task = asyncio.current_task()
                ours = read.cancelled() and self._stopping.is_set()
                if not ours or (task is not None and task.cancelling()):
                    raise
                # stop() cancelled the read: run what it may have been given meanwhile.
                await self._adopt_own_pending()
                return
            except REDIS_ERRORS as exc:
                # Down, refusing writes (READONLY after a failover, OOM), the stream
                # gone: keep trying, with backoff, until Redis serves us again.
                await self._retry_read.pause(exc)
                continue
            finally:
                self._read = None
            self._retry_read.succeeded()
            for entry in entries:
                self._start(entry)

    async def _adopt_own_pending(self) -> None:
        """Run what an abandoned read may have delivered to us without our seeing it."""
        try:
            entries = await self.queue.own_pending(self.consumer)
        except REDIS_ERRORS as exc:
            log.warning("could not check own pending entries (%s); they will be reclaimed", exc)
            return
        for entry in entries:
            if entry.entry_id not in self._inflight:
                self._start(entry)

    async def _wait_stopping_or(self, aw: Awaitable[Any], timeout: float | None = None) -> None:
        waiter = asyncio.ensure_future(aw)
        stopper = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({waiter, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
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
                # Meanwhile the entry stays in flight: its lease is renewed, nobody else
                # runs it.
                await self._replies.reply(done)
        except Exception:
            # Only a bug in this module gets here; the entry stays pending and is reclaimed.
            log.exception("worker failed on entry %r", entry.entry_id)
        finally:
            self._inflight.pop(entry.entry_id, None)
            if self._gate is not None:
                self._gate.forget(entry.entry_id)
            self._slot_free.set()

    async def _answer(self, entry: Entry) -> Done | None:
        cfg = self.config
        try:
            env = Envelope.decode(entry.raw or b"")
        except InvalidRequestError as exc:
            await self._dead_letter(entry, exc)
            address = reply_address(entry.raw or b"")
            if address is None:
                return None
            return Done(entry, address[1], encode_error(address[0], exc))
        if entry.deliveries > cfg.max_deliveries:
            err: RpcError = DeadLetteredError(
                f"request delivered {entry.deliveries - 1} times without an answer; dead-lettered",
                data={
                    "service": cfg.service,
                    "deliveries": entry.deliveries - 1,
                    "last_error": "the worker handling it stopped before answering",
                },
            )
            await self._dead_letter(entry, err)
            return Done(entry, env.reply_to, encode_error(env.id, err))
        deadline = self._deadline_of(entry, env)
        if time.time() >= deadline:
            err = RpcTimeoutError(
                "deadline passed before the request was run",
                data={"service": cfg.service, "method": env.method},
            )
            return Done(entry, env.reply_to, encode_error(env.id, err))

        if env.reply_to is None:
            return await self._answer_valid(entry, env, deadline)
        index = self._cancellation
        if index.cancelled_before_running(env.reply_to, env.id):
            return self._cancelled_done(entry, env, None, deadline)
        index.track(entry.entry_id, env.reply_to, env.id, env.idempotency_key)
        try:
            return await self._answer_valid(entry, env, deadline)
        except asyncio.CancelledError:
            if not index.requested(entry.entry_id) or self._stopping.is_set():
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            claimed = self._gate.claimed(entry.entry_id) if self._gate else None
            return self._cancelled_done(entry, env, claimed, deadline)
        finally:
            index.untrack(entry.entry_id, env.reply_to, env.id, env.idempotency_key)

    def _deadline_of(self, entry: Entry, env: Envelope) -> float:
        """The request's deadline on this worker's clock.

        A relative budget counts from the entry's id (the time Redis appended it, on Redis's
        clock, translated to ours): skew between the caller's clock and ours does not
        matter. An envelope with only an absolute deadline (an older producer) is taken at
        its word. Either way no budget exceeds MAX_TIMEOUT.
        """
        now = time.time()
        if env.timeout is not None:
            try:
                appended = int(entry.entry_id.split(b"-", 1)[0]) / 1000 - self.clock_offset
            except ValueError:
                appended = now
            return appended + min(env.timeout, MAX_TIMEOUT)
        if env.deadline is not None:
            return min(env.deadline, now + MAX_TIMEOUT)
        return now + min(self.config.default_timeout, MAX_TIMEOUT)

    async def _answer_valid(self, entry: Entry, env: Envelope, deadline: float) -> Done:
        store_key = None
        digest = b""
        if env.idempotency_key is not None and self._gate is not None:
            key, digest, stored = await self._gate.claim(
                env.idempotency_key, env.method, env.params, entry.entry_id, deadline
            )
            if isinstance(stored, bytes):
                return Done(entry, env.reply_to, retag_reply(stored, env.id), deadline=deadline)
            if isinstance(stored, RpcError):
                return Done(entry, env.reply_to, encode_error(env.id, stored), deadline=deadline)
            # Ours now: a cancel from here on releases it (see _cancelled_done).
            store_key = key

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
        try:
            payload, keep = await self.observer.run(env, call, self._invoke(env, call, deadline))
        finally:
            if store_key is not None and self._gate is not None:
                self._gate.ran(entry.entry_id)
        if store_key is not None and keep:
            payload_stored = replies.stored_value(digest, payload)
            return Done(entry, env.reply_to, payload, store_key, keep, deadline, payload_stored)
        return Done(entry, env.reply_to, payload, store_key, keep, deadline)

    # -- cancellation --------------------------------------------------------------------

    def _cancelled_done(
        self, entry: Entry, env: Envelope, claimed_key: str | None, deadline: float
    ) -> Done:
        self.cancelled += 1
        self.observer.stats.cancelled += 1
        err = CancelledError(
            "the caller cancelled the request",
            data={"service": self.config.service, "method": env.method},
        )
        # keep=False releases the idempotency key this request held, so a waiting repeat runs.
        return Done(entry, env.reply_to, encode_error(env.id, err), claimed_key, False, deadline)

    def _on_cancel(self, note: Notification) -> None:
        if note.method != cancelling.METHOD:
            if self.on_presence is not None and note.method in presence.METHODS:
                self.on_presence(note)
            return
        for entry_id in self._cancellation.apply(
            cancelling.parse(note.params), lambda e: e in self._inflight
        ):
            self._inflight[entry_id].cancel()

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
                err: RpcError = RpcTimeoutError(
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

    async def _dead_letter(self, entry: Entry, err: RpcError) -> None:
        log.error("dead-lettering %r of %r: %s", entry.entry_id, self.config.service, err)
        self.observer.stats.dead_lettered += 1
        try:
            await self._retry_dead.call(self.queue.dead_letter, entry, err.to_dict(), self.consumer)
        except Stopped:
            log.warning("stopping before %r could be dead-lettered", entry.entry_id)

    # -- leases, reclaiming, heartbeats ------------------------------------------------------

    async def _reclaim_loop(self) -> None:
        interval = max(self.config.reclaim_after / 2, 0.05)
        min_idle_ms = int(self.config.reclaim_after * 1000)
        while not self._stopping.is_set():
            await asyncio.sleep(interval)
            if self._stopping.is_set():
                continue
            try:
                if await self.queue.reclaimable(min_idle_ms):
                    await self._run_reclaimed(min_idle_ms)
            except REDIS_ERRORS as exc:
                await self._retry_reclaim.pause(exc)
            else:
                self._retry_reclaim.succeeded()
            finally:
                self._reclaiming = False
                self._slot_free.set()

    async def _run_reclaimed(self, min_idle_ms: int) -> None:
        """Take over a dead worker's entries one at a time, in a slot kept for them.

        One of them may be what killed that worker. Run together, a poison entry would take
        the others down with it, again and again, until innocent requests are dead-lettered
        with it: reclaimed entries never run two at once. Fresh requests go on in the other
        slots meanwhile (a worker with one slot runs the reclaimed entries alone), so a
        crash delays new work by at most one slot's worth: a fresh request crashed by a
        poison it ran beside is delivered once more, and is dead-lettered only with
        `--max-deliveries 1`.
        """
        self._reclaiming = True
        while len(self._inflight) >= self.config.concurrency and not self._stopping.is_set():
            self._slot_free.clear()
            await self._wait_stopping_or(self._slot_free.wait())
        while not self._stopping.is_set():
            entries = await self.queue.reclaim(self.consumer, min_idle_ms, 1)
            if not entries:
                return
            entry = entries[0]
            self.observer.stats.reclaimed += 1
            log.warning(
                "reclaimed %r of %r (delivery %d); running it apart from other reclaims",
                entry.entry_id,
                self.config.service,
                entry.deliveries,
            )
            self._reclaimed = entry.entry_id
            self._start(entry)
            await asyncio.wait({self._inflight[entry.entry_id]})
            self._reclaimed = None

    async def _beat(self) -> None:
        cfg = self.config
        stats = self.observer.stats
        if self.metrics is not None:
            self.backlog = (await self.queue.stats())["backlog"]
        before = time.time()
        redis_now = await registry.server_time(self.redis)
        self.clock_offset = redis_now - (before + time.time()) / 2
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
            except REDIS_ERRORS as exc:
                # The next beat comes after the backoff or the interval, whichever is longer.
                await self._retry_beat.pause(exc)
            else:
                self._retry_beat.succeeded()

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


def service_of(target: object, service: str | None = None) -> str:
    """`service`, else the name the target declares, else one made from its class name."""
    declared = target.service if isinstance(target, ServiceAware) else None
    return service or declared or default_service_name(type(target).__name__)


async def run_worker(
    target: Servable,
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
    bind(target, host, name)
    await call_on_start(target)
    hooks = PresenceHooks(target) if wants_presence(target) else None
    worker = Worker(
        answering_discover(target.handle_rpc, target, name),
        WorkerConfig(service=name, **options),
        url,
        on_presence=hooks.deliver if hooks is not None else None,
    )
    serving = asyncio.create_task(worker.serve())
    # `stop` counts from the start: a worker still waiting for Redis stops when asked.
    stopper = asyncio.create_task(stop.wait()) if stop is not None else None
    try:
        started = asyncio.create_task(worker.ready.wait())
        await asyncio.wait(
            {t for t in (serving, started, stopper) if t is not None},
            return_when=asyncio.FIRST_COMPLETED,
        )
        started.cancel()
        if ready is not None and worker.ready.is_set():
            ready.set()
        # asyncio.wait, not `await serving`: cancelling us must drain the worker, not cancel it.
        if stopper is None or not stopper.done():
            waiters = {t for t in (serving, stopper) if t is not None}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if stopper is not None:
            stopper.cancel()
        worker.stop()
        await serving
        try:
            if hooks is not None:
                await hooks.aclose()
            await call_on_stop(target)
        finally:
            await host.aclose()
