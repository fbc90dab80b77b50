"""Serving a node in the edge's own process, with no broker between them.

`RpcNode.start_server()` without a broker URL uses this: the edge hands each request
straight to the node (`InProcessService.call`) instead of through a request stream, a
worker and a reply stream. What a caller sees is the same as through a worker:

- deadlines: a request whose deadline passed before a slot freed is answered -32001
  ("deadline passed before the request was run"); a handler still running at the
  deadline is cancelled and answered -32001; calls it makes inherit the deadline
  (`current_call`);
- errors: an RpcError raised by the handler is answered as is; anything else is a bare
  -32603; a result that is not JSON is a -32603 naming the type;
- concurrency: at most `concurrency` handlers run at once; up to `max_backlog` more wait
  for a slot, beyond that requests are answered -32002 overloaded;
- idempotency keys: a repeat within `idempotency_ttl` is answered from the first run
  (waiting for it while it runs); a timeout or a "try again" error is not kept;
- cancellation: a request without a key runs in its caller's task, so a caller that goes
  away (an HTTP client disconnecting, a WebSocket closing) cancels its handler; a keyed
  request runs on until its deadline so that a retry with the key gets its answer;
- notifications from the node go straight to the edge's WebSocket clients.

Only the node's own service is served; a request for another service is answered -32003
(no live workers), as the edge answers a service nobody serves.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from spark.aio import timeout
from spark.broker import notify as notifying
from spark.broker.connection import MEMORY_URL
from spark.broker.notify import Notification
from spark.context import CallInfo, current_call
from spark.errors import (
    InternalError,
    OverloadedError,
    RpcError,
    RpcTimeoutError,
    ServiceUnavailableError,
)
from spark.runtime.discovery import METHOD as DISCOVER
from spark.runtime.discovery import answering_discover
from spark.runtime.host import ServiceHost

log = logging.getLogger("spark.server")

T = TypeVar("T")

#: Idempotency keys remembered at most (the oldest finished ones are forgotten first).
MAX_KEYS = 10_000


@dataclass(slots=True)
class _Keyed:
    """One idempotency key: the task of its first run and until when its reply is kept."""

    task: asyncio.Task[Any]
    expires: float


class InProcessHost(ServiceHost):
    """`node.runtime` of a node served in-process: notifications go straight to the edge.

    State and `redis` work as in a worker, on the embedded broker (the service's own
    GraphState lives in this process); plain `def` handlers run in its thread pool.
    """

    def __init__(
        self, deliver: Callable[[Notification], object], *, service: str, threads: int = 16
    ):
        super().__init__(MEMORY_URL, service=service, threads=threads)
        self._deliver = deliver

    async def notify(
        self, service: str, client_id: str | None, method: str, params: Any = None
    ) -> int:
        # Encoded and decoded as on the wire: a value that is not JSON fails here, as it
        # would when published, and clients receive exactly what a worker would send.
        raw = notifying.message(method, params, service=service)
        note = notifying.decode(notifying.channel(service, client_id), raw)
        if note is None:
            return 0
        self._deliver(note)
        return 1  # like a publish that one subscriber (this edge) received


class InProcessService:
    """Runs one node's methods for the edge of the same process.

    Answers `call` and `notify` like a `BrokerClient` does for a service served by
    workers, so the edge uses either without knowing which.
    """

    def __init__(
        self,
        node: Any,
        service: str,
        *,
        concurrency: int = 16,
        max_backlog: int = 10_000,
        idempotency_ttl: float = 3600.0,
        grace: float = 30.0,
    ):
        if concurrency < 1 or max_backlog < 0:
            raise ValueError("concurrency must be positive and max_backlog not negative")
        self.node = node
        self.service = service
        #: The node's methods; `rpc.discover` answered as a worker answers it. Chosen per
        #: call rather than wrapped, to spare every call the wrapper's coroutine.
        self._handle = node.handle_rpc
        self._discover = answering_discover(node.handle_rpc, node, service)
        self.concurrency = concurrency
        self.max_backlog = max_backlog
        self.idempotency_ttl = idempotency_ttl
        self.grace = grace
        #: Stands for the edge's broker client id: the client id of calls made over HTTP.
        self.client_id = uuid.uuid4().hex
        self._slots = asyncio.Semaphore(concurrency)
        self._waiting = 0
        self._seq = 0
        self._keys: OrderedDict[str, _Keyed] = OrderedDict()
        #: Notifications and keyed requests, which run in tasks of their own.
        self._background: set[asyncio.Task[Any]] = set()
        self.processed = 0
        self.failed = 0

    # -- the BrokerClient surface the edge uses ------------------------------------------

    async def call(
        self,
        service: str,
        method: str,
        params: Any = None,
        *,
        deadline: float,
        idempotency_key: str | None = None,
        client_id: str | None = None,
        cancel_on_abort: bool = True,
        **_options: Any,
    ) -> Any:
        """The method's result (an `orjson.Fragment`), or raises an RpcError."""
        self._check_service(service)
        if idempotency_key is not None:
            return await self._keyed(method, params, deadline, idempotency_key, client_id)
        if cancel_on_abort:
            return await self._run(method, params, deadline, None, client_id)
        # Not cancelled with its caller: it runs on in a task of its own.
        task = self._spawn(self._run(method, params, deadline, None, client_id))
        return await asyncio.shield(task)

    async def notify(
        self,
        service: str,
        method: str,
        params: Any = None,
        *,
        deadline: float,
        **_options: Any,
    ) -> None:
        """Start a notification (it runs, nobody is answered) and return at once."""
        self._check_service(service)
        self._spawn(self._run_notification(method, params, deadline))

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "broker": "none (in-process)", "services": {self.service: 1}}

    async def drain(self) -> None:
        """Let notifications and keyed requests finish (up to `grace`), then cancel them."""
        tasks = list(self._background)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=self.grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        self._keys.clear()

    # -- running -------------------------------------------------------------------------

    def _check_service(self, service: str) -> None:
        if service != self.service:
            raise ServiceUnavailableError(
                f"service {service!r} has no live workers", data={"service": service}
            )

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def _run_notification(self, method: str, params: Any, deadline: float) -> None:
        try:
            await self._run(method, params, deadline, None, None)
        except RpcError as exc:
            log.debug("notification %s.%s failed: %s", self.service, method, exc)

    async def _run(
        self,
        method: str,
        params: Any,
        deadline: float,
        idempotency_key: str | None,
        client_id: str | None,
    ) -> Any:
        remaining = deadline - time.time()
        if self._slots.locked():
            if self._waiting >= self.max_backlog:
                raise OverloadedError(
                    f"service {self.service!r} has a full backlog", data={"service": self.service}
                )
            self._waiting += 1
            try:
                async with asyncio.timeout(max(remaining, 0)):
                    await self._slots.acquire()
            except TimeoutError:
                raise self._expired(method) from None
            finally:
                self._waiting -= 1
            remaining = deadline - time.time()
        else:
            await self._slots.acquire()  # free: returns without suspending
        try:
            if remaining <= 0:
                raise self._expired(method)
            self._seq += 1
            call = CallInfo(
                request_id=f"{self._seq:x}",
                service=self.service,
                method=method,
                client_id=client_id or self.client_id,
                deadline=deadline,
                idempotency_key=idempotency_key,
            )
            token = current_call.set(call)
            try:
                with timeout(remaining) as scope:
                    handle = self._discover if method == DISCOVER else self._handle
                    result = await handle(method, params, call)
            except RpcError:  # before TimeoutError: RpcTimeoutError is one
                self.failed += 1
                raise
            except TimeoutError:
                self.failed += 1
                if scope.expired():
                    raise RpcTimeoutError(
                        "handler did not finish before the request's deadline",
                        data={"service": self.service, "method": method},
                    ) from None
                log.exception("handler %s.%s raised", self.service, method)
                raise InternalError() from None
            except Exception:
                self.failed += 1
                log.exception("handler %s.%s raised", self.service, method)
                raise InternalError() from None
            finally:
                current_call.reset(token)
            return self._encode(method, result)
        finally:
            self._slots.release()

    def _expired(self, method: str) -> RpcTimeoutError:
        return RpcTimeoutError(
            "deadline passed before the request was run",
            data={"service": self.service, "method": method},
        )

    def _encode(self, method: str, result: Any) -> orjson.Fragment:
        try:
            # Encoded here, once: a result that is not JSON fails this request alone, as
            # in a worker, and the edge embeds the bytes as they are.
            encoded = orjson.Fragment(orjson.dumps(result))
        except TypeError as exc:
            self.failed += 1
            log.error(
                "handler %s.%s returned a value that is not JSON: %s", self.service, method, exc
            )
            raise InternalError(data={"type": type(exc).__name__}) from None
        self.processed += 1
        return encoded

    # -- idempotency keys ----------------------------------------------------------------

    async def _keyed(
        self,
        method: str,
        params: Any,
        deadline: float,
        key: str,
        client_id: str | None,
    ) -> Any:
        while True:
            now = time.time()
            self._forget_expired(now)
            keyed = self._keys.get(key)
            first = keyed is None
            if keyed is None:
                task = self._spawn(self._run(method, params, deadline, key, client_id))
                keyed = self._keys[key] = _Keyed(task, now + self.idempotency_ttl)
                task.add_done_callback(functools.partial(self._settle, key))
                self._bound_keys()
            task = keyed.task
            if not task.done():
                try:
                    async with asyncio.timeout(max(deadline - now, 0)):
                        await asyncio.wait({task})
                except TimeoutError:
                    raise RpcTimeoutError(
                        "an earlier request with this idempotency key is still running"
                    ) from None
            # The first request gets its own answer; a repeat gets it only when it is kept,
            # else (a timeout, a "try again" error) the repeat runs again.
            if first or _kept(task):
                if task.cancelled():
                    raise ServiceUnavailableError(
                        "the service stopped before answering", data={"service": self.service}
                    )
                return task.result()

    def _settle(self, key: str, task: asyncio.Task[Any]) -> None:
        """A finished first run: forget its key unless its answer answers repeats."""
        keyed = self._keys.get(key)
        if keyed is not None and keyed.task is task and not _kept(task):
            del self._keys[key]

    def _forget_expired(self, now: float) -> None:
        while self._keys:
            key, oldest = next(iter(self._keys.items()))
            if oldest.expires > now:
                return
            del self._keys[key]

    def _bound_keys(self) -> None:
        if len(self._keys) <= MAX_KEYS:
            return
        for key in [k for k, v in self._keys.items() if v.task.done()]:
            del self._keys[key]
            if len(self._keys) <= MAX_KEYS:
                return


def _kept(task: asyncio.Task[Any]) -> bool:
    """Whether a finished run's answer is kept for repeats of its key (as a worker does)."""
    if task.cancelled():
        return False
    exc = task.exception()
    if exc is None:
        return True
    return isinstance(exc, RpcError) and not (isinstance(exc, RpcTimeoutError) or exc.retryable)
