"""`WebSocketTransport`: JSON-RPC over one WebSocket connection to a spark-edge.

Many calls share the connection and are matched to their replies by id (ids are never
reused on a transport, so a reply that arrives after its caller gave up is recognised and
dropped; it is never mistaken for a notification, which has no id). Messages with a method
and no id are server-pushed notifications, given to `on_notification(method, params)`.

When the connection drops, calls waiting on it fail with `RpcConnectionError` (their
outcome is unknown: retry with an idempotency key); the next call reconnects. Attempts are
spaced by the project's one backoff policy (`spark.broker.retrying.Backoff`: jittered
exponential waits), shared by every call on the transport; a call whose deadline falls
within the wait fails at once. When `on_notification` is set, the transport also reconnects
by itself in the background so notifications keep coming, logging the outage at the
policy's steady rate; it stops when the edge refuses the credentials (401).

Each request carries its deadline (as seconds left) and idempotency key in an extra member
the edge reads, `"spark": {"timeout": 2.5, "idempotency_key": "..."}` (JSON-RPC servers
ignore members they do not know); without it the edge applies its default timeout (or the
`?timeout=` given at the handshake). The transport stops waiting at each call's deadline, or
after the call's `timeout` when that is shorter.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from typing import Any

import aiohttp
import orjson

from spark import tracing
from spark.broker.retrying import Backoff
from spark.client.http import CONNECTION_ERRORS, _Base, remaining
from spark.client.transport import Call, CallOutcome
from spark.errors import RpcConnectionError, RpcError, RpcTimeoutError, UnauthorizedError
from spark.protocol import ProtocolError, Request, Response, encode_notification, parse_messages
from spark.protocol.wire import CLIENT_ID_HEADER, SPARK_MEMBER, spark_member

log = logging.getLogger("spark.client.ws")

BACKOFF_MIN = 0.05
BACKOFF_MAX = 5.0

#: What the background reconnect retries: the edge unreachable, or no handshake in time.
RECONNECTABLE: tuple[type[Exception], ...] = (RpcConnectionError, RpcTimeoutError)


def _request_doc(
    request: Request, deadline: float, idempotency_key: str | None = None
) -> dict[str, Any]:
    doc = request.to_dict()
    trace = tracing.inject() if tracing.ENABLED else None
    doc[SPARK_MEMBER] = spark_member(deadline - time.time(), idempotency_key, trace)
    return doc


class WebSocketTransport(_Base):
    def __init__(self, endpoint: str, *, heartbeat: float | None = 20.0, **kwargs: Any):
        super().__init__(endpoint, **kwargs)
        self.heartbeat = heartbeat
        #: The id the edge gave this connection (targeted notifications reach it).
        self.client_id: str | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task | None = None
        self._reconnector: asyncio.Task | None = None
        self._lock: asyncio.Lock | None = None
        self._pending: dict[int, asyncio.Future] = {}
        #: Consecutive failed attempts (by calls or the reconnect), and when the next may go.
        self._failures = 0
        self._next_attempt = 0.0
        self._backoff = Backoff(
            f"reconnecting to {self.ws_url}",
            logger=log,
            retry_on=RECONNECTABLE,
            base=BACKOFF_MIN,
            max_wait=BACKOFF_MAX,
        )
        #: Replies that matched no waiting call (late or unknown ids), dropped.
        self.dropped_replies = 0
        #: Connections opened so far (1 + reconnects).
        self.connections = 0

    # -- connection ----------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._ws is not None and not self._ws.closed

    def is_connected(self) -> bool:
        return self.connected

    async def connect(self, deadline: float | None = None) -> aiohttp.ClientWebSocketResponse:
        """The open connection, opening it first if needed (one attempt, after any backoff)."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.connected:
                return self._ws
            wait = self._next_attempt - time.monotonic()
            if wait > 0:
                if deadline is not None and time.time() + wait >= deadline:
                    raise RpcConnectionError(
                        f"cannot reach {self.ws_url}: still backing off after "
                        f"{self._failures} failed attempt(s)"
                    )
                await asyncio.sleep(wait)
            left = None if deadline is None else remaining(deadline)
            if self.connect_timeout is not None:
                left = self.connect_timeout if left is None else min(left, self.connect_timeout)
            try:
                async with asyncio.timeout(left):
                    ws = await self.session.ws_connect(
                        self.ws_url,
                        heartbeat=self.heartbeat,
                        timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
                        max_msg_size=0,
                    )
            except TimeoutError:
                self._failed()
                raise RpcTimeoutError(f"no handshake from {self.ws_url} in time") from None
            except aiohttp.WSServerHandshakeError as exc:
                self._failed()
                if exc.status == 401:
                    raise UnauthorizedError(f"{self.ws_url} refused the credentials") from exc
                raise RpcConnectionError(f"cannot open {self.ws_url}: {exc}") from exc
            except CONNECTION_ERRORS as exc:
                self._failed()
                raise RpcConnectionError(f"cannot reach {self.ws_url}: {exc}") from exc
            self._failures = 0
            self.connections += 1
            self._ws = ws
            response = getattr(ws, "_response", None)  # aiohttp keeps the handshake private
            self.client_id = response.headers.get(CLIENT_ID_HEADER) if response else None
            self._reader = asyncio.create_task(self._read(ws), name="spark-ws-reader")
            return ws

    def _failed(self) -> None:
        self._failures += 1
        self._next_attempt = time.monotonic() + self._backoff.wait_after(self._failures)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        try:
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.TEXT or msg.type is aiohttp.WSMsgType.BINARY:
                    await self._received(msg.data)
                elif msg.type is aiohttp.WSMsgType.ERROR:
                    break
        finally:
            self._lost(ws)

    def _lost(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # The reader was cancelled (loop shutdown): keep the socket for aclose() to
            # close, and start nothing new on a loop that is going away.
            return
        if self._ws is ws:
            self._ws = None
        error = RpcConnectionError(f"connection to {self.ws_url} closed")
        for fut in list(self._pending.values()):
            if not fut.done():
                fut.set_exception(error)
        self._pending.clear()
        if not self._closed and self.on_notification is not None:
            self._failed()
            if self._reconnector is None or self._reconnector.done():
                self._reconnector = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        """Keep a connection open for notifications while the edge is away. `connect()`
        waits out the policy's backoff; the policy's log says how the outage goes."""
        outage = self._backoff.log
        while not self._closed and not self.connected:
            try:
                await self.connect()
            except UnauthorizedError as exc:
                # Retrying cannot change the answer; the next call tries again.
                log.error("stopped reconnecting to %s: %s", self.ws_url, exc)
                return
            except RECONNECTABLE as exc:
                outage.failed(exc)
        if self.connected:
            outage.recovered()

    async def _received(self, data: str | bytes) -> None:
        try:
            messages = parse_messages(data)
        except ProtocolError as exc:
            log.warning("dropping a message from %s: %s", self.ws_url, exc.message)
            return
        for message in messages:
            if isinstance(message, Response):
                self._resolve(message)
            else:
                await self._notify(message.method, message.params)

    def _resolve(self, reply: Response) -> None:
        fut = self._pending.pop(reply.id, None) if reply.id is not None else None
        if fut is None or fut.done():
            self.dropped_replies += 1
            return
        fut.set_result(reply)

    async def _notify(self, method: str, params: Any) -> None:
        handler = self.on_notification
        if handler is None:
            return
        try:
            result = handler(method, params)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("notification handler failed for %r", method)

    # -- calls ---------------------------------------------------------------------------

    async def _send(self, payload: bytes, deadline: float) -> None:
        ws = await self.connect(deadline)
        try:
            await ws.send_str(payload.decode())
        except (*CONNECTION_ERRORS, RuntimeError) as exc:
            raise RpcConnectionError(f"sending to {self.ws_url} failed: {exc}") from exc

    async def _wait(
        self, futures: dict[int, asyncio.Future], deadline: float, wait: float | None = None
    ) -> list[Response]:
        left = remaining(deadline)
        if wait is not None:
            left = max(0.0, min(wait, left))
        try:
            async with asyncio.timeout(left):
                return list(await asyncio.gather(*futures.values()))
        except TimeoutError:
            raise RpcTimeoutError(f"no reply from {self.ws_url} within {left:.3g}s") from None
        finally:
            for rid in futures:
                self._pending.pop(rid, None)

    @tracing.traced_call
    async def call(
        self,
        method: str,
        params: Any = None,
        *,
        deadline: float,
        idempotency_key: str | None = None,
        state: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        remaining(deadline)
        rid = self.next_id()
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            doc = _request_doc(Request(method, params, rid), deadline, idempotency_key)
            await self._send(orjson.dumps(doc), deadline)
            (reply,) = await self._wait({rid: fut}, deadline, timeout)
        finally:
            self._pending.pop(rid, None)
        return reply.unwrap()

    async def notify(
        self, method: str, params: Any = None, *, deadline: float, state: str | None = None
    ) -> None:
        await self._send(encode_notification(method, params), deadline)

    async def batch(self, calls: list[Call], *, deadline: float) -> list[CallOutcome]:
        if not calls:
            return []
        loop = asyncio.get_running_loop()
        items, ids, futures = [], [], {}
        for c in calls:
            if c.notify:
                items.append(_request_doc(Request.notification(c.method, c.params), deadline))
                ids.append(None)
            else:
                rid = self.next_id()
                items.append(
                    _request_doc(Request(c.method, c.params, rid), deadline, c.idempotency_key)
                )
                ids.append(rid)
                futures[rid] = self._pending[rid] = loop.create_future()
        try:
            await self._send(orjson.dumps(items), deadline)
            replies = dict(zip(futures, await self._wait(futures, deadline), strict=True))
        except Exception as exc:
            for rid in futures:
                self._pending.pop(rid, None)
            return [CallOutcome() if rid is None else CallOutcome(error=exc) for rid in ids]
        outcomes = []
        for rid in ids:
            if rid is None:
                outcomes.append(CallOutcome())
                continue
            try:
                outcomes.append(CallOutcome(result=replies[rid].unwrap()))
            except RpcError as exc:
                outcomes.append(CallOutcome(error=exc))
        return outcomes

    @property
    def pending(self) -> int:
        """Calls waiting for a reply on this transport."""
        return len(self._pending)

    async def aclose(self) -> None:
        self._closed = True
        for task in (self._reconnector,):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._ws is not None:
            ws, self._ws = self._ws, None
            with contextlib.suppress(Exception):
                await ws.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(RpcConnectionError("transport closed"))
        self._pending.clear()
        await super().aclose()
