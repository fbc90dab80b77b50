"""Calling services through Redis: the client half of the broker.

One `BrokerClient` per process and broker URL serves every caller in it (proxies, the edge,
the CLI). Calls made in the same event-loop turn are enqueued in one pipeline; one reader
task pops every reply for this client and resolves the waiting futures by request id. A
reply that arrives after its caller stopped waiting (or a second reply for the same id) is
dropped, so exactly one reply reaches each caller.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import time
import uuid
from collections import defaultdict
from typing import Any

import redis.asyncio as aioredis

from spark import aio, tracing
from spark.aio import Batcher, cancel_and_wait, reraise_cancellation
from spark.broker import (
    UNREACHABLE,
    Envelope,
    ServiceQueue,
    connect,
    registry,
    replies,
    resolve_url,
)
from spark.broker import cancel as cancelling
from spark.broker.cancel import CancelItem
from spark.broker.connection import describe, is_memory
from spark.broker.queue import DEFAULT_MAX_BACKLOG, DEFAULT_MAX_BACKLOG_BYTES
from spark.broker.retrying import REDIS_ERRORS, Backoff
from spark.context import inherited_deadline
from spark.errors import (
    InvalidParamsError,
    OverloadedError,
    RpcConnectionError,
    RpcTimeoutError,
    ServiceUnavailableError,
)
from spark.lifetime import close_with_loop
from spark.lru import LruDict
from spark.protocol.wire import decode_reply

log = logging.getLogger("spark.client")

DEFAULT_TIMEOUT = 30.0
#: How long a "this service has live workers" answer is trusted.
LIVENESS_CACHE_SECONDS = 1.0
#: Seconds one BLPOP waits; bounds how long the reader takes to notice it should stop.
READ_BLOCK_SECONDS = 1.0
#: Seconds without calls after which the replies read are trimmed (else every TRIM_EVERY).
IDLE_TRIM_SECONDS = 1.0
#: Services whose queue handle and liveness are kept (least recently used ones are
#: dropped): callers of an edge can name any number of services.
MAX_SERVICES = 1024


def check_params(params: Any) -> None:
    """JSON-RPC params are an object, an array or absent; refuse anything else up front."""
    if params is not None and not isinstance(params, dict | list):
        raise InvalidParamsError(
            "params must be an object or an array", data={"type": type(params).__name__}
        )


class BrokerClient:
    def __init__(
        self,
        url: str | None = None,
        *,
        client_id: str | None = None,
        max_backlog: int | None = None,
        max_backlog_bytes: int | None = None,
    ):
        self.url = resolve_url(url)
        self.client_id = client_id or uuid.uuid4().hex
        #: Requests a service's stream may hold before enqueues are refused (overloaded);
        #: None means DEFAULT_MAX_BACKLOG.
        self.max_backlog = DEFAULT_MAX_BACKLOG if max_backlog is None else max_backlog
        self.max_backlog_bytes = (
            DEFAULT_MAX_BACKLOG_BYTES if max_backlog_bytes is None else max_backlog_bytes
        )
        self._redis: aioredis.Redis | None = None
        self._blocking: aioredis.Redis | None = None
        self._writer: aioredis.Redis | None = None
        self._queues: LruDict[str, ServiceQueue] = LruDict(MAX_SERVICES)
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._outbox: Batcher[tuple[str, bytes], bytes] = Batcher(self._send)
        self._cancels: Batcher[tuple[str, CancelItem], None] = Batcher(self._send_cancels)
        self._cancelling: set[asyncio.Task[None]] = set()
        self._reader: asyncio.Task[None] | None = None
        #: Set while calls wait for replies; the reader sleeps on it otherwise.
        self._wanted = asyncio.Event()
        self._liveness: LruDict[str, tuple[float, int]] = LruDict(MAX_SERVICES)
        self._liveness_checks: dict[str, asyncio.Future[tuple[float, int]]] = {}
        self._seq = 0
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def redis(self) -> aioredis.Redis:
        if self._redis is None:
            close_with_loop(self)
            self._redis = connect(self.url)
        return self._redis

    def _ensure_reader(self) -> None:
        if self._reader is None or self._reader.done():
            close_with_loop(self)
            if self._blocking is None:
                self._blocking = connect(
                    self.url,
                    max_connections=1,
                    socket_timeout=READ_BLOCK_SECONDS + 10,
                    dedicated=True,
                )
            self._reader = asyncio.create_task(self._read_replies(), name="spark-replies")

    async def aclose(self) -> None:
        self._closed = True
        await cancel_and_wait(self._reader, *self._liveness_checks.values())
        if self._cancelling:
            # Cancels are sent when callers give up: let those in flight go out.
            await asyncio.wait(list(self._cancelling), timeout=1.0)
        await cancel_and_wait(*self._cancelling)
        await self._cancels.aclose()
        await self._outbox.aclose()
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(RpcConnectionError("client closed"))
        self._pending.clear()
        for client in (self._blocking, self._writer, self._redis):
            if client is not None:
                await client.aclose()
        self._redis = self._blocking = self._writer = None
        self._queues.clear()

    async def __aenter__(self) -> BrokerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def queue(self, service: str) -> ServiceQueue:
        q = self._queues.get(service)
        if q is None:
            if self._writer is None:
                close_with_loop(self)
                # Enqueues leave from one Batcher, one script call at a time: a dedicated
                # connection spares the pool's bookkeeping on every call.
                self._writer = connect(self.url, max_connections=1, dedicated=True)
            q = self._queues[service] = ServiceQueue(
                self._writer,
                service,
                max_backlog=self.max_backlog,
                max_backlog_bytes=self.max_backlog_bytes,
            )
        return q

    # -- calls -------------------------------------------------------------------------

    def next_id(self) -> str:
        self._seq += 1
        return f"{self._seq:x}"

    def deadline_for(self, timeout: float | None, deadline: float | None = None) -> float:
        """Absolute deadline: the explicit one, else now + timeout, never past the caller's own."""
        if deadline is None:
            deadline = time.time() + (DEFAULT_TIMEOUT if timeout is None else timeout)
        inherited = inherited_deadline()
        if inherited is not None and inherited < deadline:
            deadline = inherited
        return deadline

    async def call(
        self,
        service: str,
        method: str,
        params: Any = None,
        *,
        timeout: float | None = None,
        deadline: float | None = None,
        idempotency_key: str | None = None,
        state: str | None = None,
        require_workers: bool = False,
        request_id: str | None = None,
        client_id: str | None = None,
        wait: float | None = None,
        cancel_on_abort: bool = True,
    ) -> Any:
        """Call `service.method` and return its result; raises an RpcError or TransportError.

        The request carries `deadline` (else now + `timeout`, never past the deadline of the
        request being served here); this caller waits for the reply until then, or for
        `wait` seconds when that is shorter (one attempt of a call that may be retried).

        When the caller gives up (cancelled, or no reply by the deadline) the workers are
        told to cancel the request (unless `cancel_on_abort` is False). A caller that
        stops waiting *before* the deadline (`wait`) leaves the request running: a retry
        with the same idempotency key then gets its reply instead of running it again.
        """
        if self._closed:
            raise RpcConnectionError("client closed")
        check_params(params)
        deadline = self.deadline_for(timeout, deadline)
        remaining = deadline - time.time()
        if remaining <= 0:
            raise RpcTimeoutError(
                "deadline already passed", data={"service": service, "method": method}
            )
        if require_workers:
            await self._require_workers(service)
        rid = request_id or self.next_id()
        span, trace = (
            tracing.start_client(service, method, rid) if tracing.ENABLED else (None, None)
        )
        env = Envelope(
            id=rid,
            method=method,
            params=params,
            reply_to=self.client_id,
            deadline=deadline,
            idempotency_key=idempotency_key,
            state=state,
            enqueued_at=time.time(),
            client=client_id,
            # Relative: the worker counts it on Redis's clock, whatever ours says.
            timeout=remaining,
            trace=trace,
        )
        waiting = remaining if wait is None else max(0.0, min(wait, remaining))
        loop = asyncio.get_running_loop()
        reply = loop.create_future()
        self._pending[rid] = reply
        self._ensure_reader()
        self._wanted.set()
        try:
            with aio.timeout(waiting):
                await self._enqueue(service, env.encode())
                return await reply
        except RpcTimeoutError:
            raise  # the worker's own answer (-32001): passed on as it is, never reworded
        except TimeoutError:
            if cancel_on_abort and waiting >= remaining:
                self.cancel(service, rid, idempotency_key)
            raise RpcTimeoutError(
                f"no reply from {service!r} within {waiting:.3g}s{self._embedded_hint()}",
                data={"service": service, "method": method},
            ) from None
        except asyncio.CancelledError:
            if cancel_on_abort:
                self.cancel(service, rid, idempotency_key)
            raise
        finally:
            self._pending.pop(rid, None)
            if span is not None:
                tracing.end_client(span, sys.exception())

    def cancel(
        self, service: str, request_id: str | None = None, idempotency_key: str | None = None
    ) -> None:
        """Tell the workers of `service` to cancel a request of this client (fire and forget).

        `request_id` names one request; `idempotency_key` every request of this client with
        that key (all attempts of a retried call). Never blocks and never raises: cancels go
        out from a background task, batched with others given meanwhile.
        """
        if self._closed or (request_id is None and idempotency_key is None):
            return
        item = CancelItem(self.client_id, request_id, idempotency_key)
        task = asyncio.get_running_loop().create_task(self._cancels.submit((service, item)))
        self._cancelling.add(task)
        task.add_done_callback(self._cancel_sent)

    def _cancel_sent(self, task: asyncio.Task[None]) -> None:
        self._cancelling.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("sending a cancel failed: %s", task.exception())

    async def _send_cancels(self, batch: list[tuple[str, CancelItem]]) -> list[None]:
        by_service: dict[str, list[CancelItem]] = defaultdict(list)
        for service, item in batch:
            by_service[service].append(item)
        await cancelling.publish(self.redis, by_service)
        return [None] * len(batch)

    async def notify(
        self,
        service: str,
        method: str,
        params: Any = None,
        *,
        timeout: float | None = None,
        deadline: float | None = None,
        idempotency_key: str | None = None,
        state: str | None = None,
    ) -> None:
        """Enqueue a notification: it runs, nobody is answered. Returns once Redis has it."""
        check_params(params)
        deadline = self.deadline_for(timeout, deadline)
        now = time.time()
        env = Envelope(
            id=self.next_id(),
            method=method,
            params=params,
            deadline=deadline,
            idempotency_key=idempotency_key,
            state=state,
            enqueued_at=now,
            timeout=max(0.0, deadline - now),
            trace=tracing.inject() if tracing.ENABLED else None,
        )
        await self._enqueue(service, env.encode())

    async def _enqueue(self, service: str, payload: bytes) -> None:
        await self._outbox.submit((service, payload))

    async def _send(self, batch: list[tuple[str, bytes]]) -> list[bytes | BaseException]:
        """Enqueue a batch, one script call per service, in one round trip per service."""
        by_service: dict[str, list[int]] = defaultdict(list)
        for i, (service, _payload) in enumerate(batch):
            by_service[service].append(i)
        try:
            if len(by_service) == 1:
                # The usual case, awaited here: gather would add a task and a loop turn
                # to the latency of every call.
                ((service, idx),) = by_service.items()
                answers = [await self.queue(service).enqueue([batch[i][1] for i in idx])]
            else:
                answers = await asyncio.gather(
                    *(
                        self.queue(s).enqueue([batch[i][1] for i in idx])
                        for s, idx in by_service.items()
                    )
                )
        except UNREACHABLE as exc:
            raise self._unreachable(exc) from exc
        results: list[bytes | BaseException] = [b""] * len(batch)
        for (service, idx), ids in zip(by_service.items(), answers, strict=True):
            for i, entry_id in zip(idx, ids, strict=True):
                results[i] = (
                    entry_id
                    if entry_id is not None
                    else OverloadedError(
                        f"service {service!r} has a full backlog", data={"service": service}
                    )
                )
        return results

    def _unreachable(self, exc: BaseException) -> RpcConnectionError:
        # describe(): the URL without its password (it ends up in logs and error bodies).
        return RpcConnectionError(f"cannot reach the broker at {describe(self.url)}: {exc}")

    async def _require_workers(self, service: str) -> None:
        now = time.monotonic()
        cached = self._liveness.get(service)
        if cached is None or now - cached[0] > LIVENESS_CACHE_SECONDS:
            # One lookup per service at a time: when the answer expires, the calls arriving
            # meanwhile (hundreds at an edge under load) wait for the same one.
            check = self._liveness_checks.get(service)
            if check is None:
                check = asyncio.ensure_future(self._count_live(service, now))
                self._liveness_checks[service] = check
                check.add_done_callback(functools.partial(self._liveness_checked, service))
            try:
                cached = await asyncio.shield(check)
            except UNREACHABLE as exc:
                raise self._unreachable(exc) from exc
        if cached[1] == 0:
            raise ServiceUnavailableError(
                f"service {service!r} has no live workers{self._embedded_hint()}",
                data={"service": service},
            )

    async def _count_live(self, service: str, now: float) -> tuple[float, int]:
        count = await registry.live_count(self.redis, self.queue(service).keys)
        cached = self._liveness[service] = (now, count)
        return cached

    def _liveness_checked(self, service: str, check: asyncio.Future[tuple[float, int]]) -> None:
        if self._liveness_checks.get(service) is check:
            del self._liveness_checks[service]
        if not check.cancelled():
            check.exception()  # retrieved: its waiters were told (or all gave up)

    def _embedded_hint(self) -> str:
        if not is_memory(self.url):
            return ""
        return (
            f" (on the embedded broker {self.url}, which only this process sees: set "
            "SPARK_REDIS_URL, or pass a redis:// URL, to reach workers started elsewhere)"
        )

    async def live_workers(self, service: str) -> int:
        return await registry.live_count(self.redis, self.queue(service).keys)

    # -- replies -----------------------------------------------------------------------

    async def _read_replies(self) -> None:
        blocking = self._blocking
        assert blocking is not None  # connected by _ensure_reader before it starts this task
        last = replies.START
        untrimmed = 0
        # Callers are bounded by their deadlines meanwhile; keep trying to read.
        retry = Backoff("reading replies", logger=log)
        while not self._closed:
            try:
                if untrimmed >= replies.TRIM_EVERY:
                    await replies.trim(blocking, self.client_id, last)
                    untrimmed = 0
                reraise_cancellation()
                if not self._pending:
                    # Nothing to wait for: sleep on an event rather than in a blocking
                    # read, which redis-py may not let a cancellation interrupt (a
                    # program's loop shutdown would then wait out a whole read).
                    self._wanted.clear()
                    if untrimmed and not await self._wait_wanted(IDLE_TRIM_SECONDS):
                        # Idle a while: trim what was read. Not at once: calls made one
                        # after another would each pay a round trip for it.
                        await replies.trim(blocking, self.client_id, last)
                        untrimmed = 0
                    await self._wanted.wait()
                    continue
                batch = await replies.read(blocking, self.client_id, last, READ_BLOCK_SECONDS)
            except REDIS_ERRORS as exc:
                # pause() honours a cancellation redis-py turned into a connection error.
                await retry.pause(exc)
                continue
            reraise_cancellation()
            retry.succeeded()
            for _entry_id, item in batch:
                self._resolve(item)
            if batch:
                last = batch[-1][0]
                untrimmed += len(batch)

    async def _wait_wanted(self, seconds: float) -> bool:
        """Whether a call came within `seconds`."""
        try:
            with aio.timeout(seconds):
                await self._wanted.wait()
        except TimeoutError:
            return False
        return True

    def _resolve(self, item: bytes) -> None:
        rid, result, error = decode_reply(item)
        # Popped here, not by the caller: the reader then sees at once that nothing waits.
        fut = self._pending.pop(rid, None) if rid is not None else None
        if fut is None or fut.done():
            return  # late or repeated: its caller has already been answered
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)
