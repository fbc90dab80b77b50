"""JSON-RPC over one WebSocket connection.

Each message (a request, a notification or a batch) runs as its own task, so many
requests are in flight at once and each answer is sent as soon as it is ready. One writer
task per connection sends answers and server-pushed notifications in order. Each
connection has a client id (sent in the handshake's `X-Spark-Client-Id` header); calls made
on it carry that id, so a handler's `send_notification_to_client(context.metadata["rpc"]
["client_id"], ...)` reaches this connection. When the client goes away its requests still
in flight are cancelled, and so are their handlers on the workers (except requests with an
idempotency key, which run on until their deadline for a retry to collect).

Outgoing messages wait in a per-connection outbox, which is bounded: notifications past
`ws_max_queued` are dropped, and a client that lets `ws_max_outbox` messages pile up unread
(it sends requests but never reads the answers) is disconnected rather than have the edge
hold every reply in memory: the queued messages are discarded, its requests still in flight
are cancelled (as when a client goes away), and the connection is closed with 1013 (try
again later). If the close frame cannot be delivered within `OVERFLOW_CLOSE_GRACE` seconds
(the client's window is shut) the TCP connection is aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from spark.broker import presence
from spark.protocol.wire import CLIENT_ID_HEADER, TIMEOUT_HEADER, TIMEOUT_QUERY
from spark.runtime.edge.core import Edge, request_options

log = logging.getLogger("spark.edge")

#: Seconds a connection disconnected for not reading has to take its 1013 close frame
#: before its TCP connection is aborted.
OVERFLOW_CLOSE_GRACE = 1.0


class WsConnection:
    def __init__(
        self,
        edge: Edge,
        ws: web.WebSocketResponse,
        service: str,
        timeout: float,
        transport: asyncio.BaseTransport | None = None,
    ):
        self.edge = edge
        self.ws = ws
        self.service = service
        self.timeout = timeout
        #: The TCP connection under `ws`, aborted when a client overflowing its outbox does
        #: not take its close frame.
        self.transport = transport
        self.client_id = uuid.uuid4().hex
        #: Who authenticated this connection (scopes its idempotency keys); None: anyone.
        self.principal: str | None = None
        self.tasks: set[asyncio.Task] = set()
        #: Bytes of the messages whose requests (notifications too) are in flight.
        self.inflight_bytes = 0
        # Bounded by hand (ws_max_queued, ws_max_outbox) so finish() can always add None.
        self._outbox: asyncio.Queue[str | None] = asyncio.Queue()
        self._writer: asyncio.Task | None = None
        #: Set once the client overflowed its outbox: nothing more is queued for it.
        self.overflowed = False
        self._closer: asyncio.Task | None = None

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write(), name=f"spark-ws-{self.client_id}")

    # -- outgoing ------------------------------------------------------------------------

    def push(self, text: str) -> bool:
        """Queue a notification; False (dropped) when the client does not keep up."""
        cfg = self.edge.config
        if (
            self.overflowed
            or self.ws.closed
            or self._outbox.qsize() >= min(cfg.ws_max_queued, cfg.ws_max_outbox)
        ):
            return False
        self._outbox.put_nowait(text)
        return True

    async def _write(self) -> None:
        while True:
            text = await self._outbox.get()
            if text is None:
                return
            try:
                await self.ws.send_str(text)
            except (ConnectionError, RuntimeError) as exc:
                log.debug("websocket %s: send failed (%s)", self.client_id, exc)
                return

    # -- incoming ------------------------------------------------------------------------

    def received(self, data: bytes | str) -> None:
        if self.overflowed:
            return  # being disconnected for not reading: its requests are not run
        parsed = self.edge.parse(data)
        cfg = self.edge.config
        size = len(data)
        if parsed.requests and (
            len(self.tasks) >= cfg.ws_max_inflight
            # One message alone always fits (max_body_bytes bounds it).
            or (self.tasks and self.inflight_bytes + size > cfg.ws_max_inflight_bytes)
        ):
            body = self.edge.overloaded(self.service, parsed, "websocket")
            if body is not None:
                self._reply(body.decode())
            return
        task = asyncio.create_task(self._answer(parsed, request_options(data, parsed)))
        self.tasks.add(task)
        self.inflight_bytes += size

        def done(t: asyncio.Task) -> None:
            self.tasks.discard(t)
            self.inflight_bytes -= size

        task.add_done_callback(done)

    async def _answer(self, parsed, options) -> None:
        body = await self.edge.run(
            self.service,
            parsed,
            transport="websocket",
            timeout=self.timeout,
            client_id=self.client_id,
            options=options,
            principal=self.principal,
        )
        if body is not None and not self.ws.closed:
            self._reply(body.decode())

    def _reply(self, text: str) -> None:
        """Queue an answer; a client that lets `ws_max_outbox` pile up unread is disconnected.

        Answers are never dropped silently while the connection lives (a caller would wait
        for nothing): past the limit the connection is closed with 1013 (try again later),
        which fails the client's pending calls at once, see `_overflow`.
        """
        if self.overflowed:
            return
        if self._outbox.qsize() >= self.edge.config.ws_max_outbox:
            self._overflow()
            return
        self._outbox.put_nowait(text)

    def _overflow(self) -> None:
        """The client does not read: discard its outbox, cancel its requests in flight
        (their handlers on the workers too) and close the connection with 1013."""
        self.overflowed = True
        log.warning(
            "websocket %s has %d messages unread (ws_max_outbox); closing it with 1013",
            self.client_id,
            self._outbox.qsize(),
        )
        while not self._outbox.empty():
            self._outbox.get_nowait()
        current = asyncio.current_task()
        for task in list(self.tasks):
            if task is not current:
                task.cancel()
        if self._writer is not None:
            self._writer.cancel()  # it is stuck sending to a client that does not read
        self._closer = asyncio.get_running_loop().create_task(self._close_overflowed())

    async def _close_overflowed(self) -> None:
        try:
            await asyncio.wait_for(
                self.ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"not reading replies"),
                OVERFLOW_CLOSE_GRACE,
            )
        except Exception as exc:  # the connection goes away regardless
            log.debug("websocket %s: close failed (%r)", self.client_id, exc)
        finally:
            if self.transport is not None:
                # The close frame could not be delivered (or the handshake finished):
                # aborting ends the receive loop either way.
                self.transport.abort()

    # -- closing -------------------------------------------------------------------------

    async def close(self, *, going_away: bool = False) -> None:
        if going_away and not self.ws.closed:
            with contextlib.suppress(Exception):
                await self.ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")

    async def finish(self) -> None:
        """After the socket closed: cancel what is still running, stop the writer."""
        self.edge.unregister(self)
        pending = list(self.tasks)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if self._closer is not None and not self._closer.done():
            self._closer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._closer
        self._outbox.put_nowait(None)
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer


async def serve_websocket(edge: Edge, request: web.Request, service: str) -> web.StreamResponse:
    """The handshake is done; run the connection until either side closes it."""
    cfg = edge.config
    ws = web.WebSocketResponse(
        heartbeat=cfg.ws_heartbeat,
        max_msg_size=cfg.max_body_bytes,
        autoping=True,
    )
    timeout = edge.timeout_for(
        request.headers.get(TIMEOUT_HEADER) or request.query.get(TIMEOUT_QUERY)
    )
    conn = WsConnection(edge, ws, service, timeout, transport=request.transport)
    conn.principal = edge.tokens.principal(request, query=True)
    ws.headers[CLIENT_ID_HEADER] = conn.client_id
    await ws.prepare(request)
    edge.register(conn)
    await edge.subscribe(conn)
    conn.start()
    try:
        await _hook(edge.on_connect, conn.client_id, ws)
        edge.announce(conn, presence.CONNECT)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                conn.received(msg.data)
            elif msg.type is WSMsgType.ERROR:
                log.info("websocket %s closed: %s", conn.client_id, ws.exception())
                break
    finally:
        await conn.finish()
        await _hook(edge.on_disconnect, conn.client_id, ws)
        edge.announce(conn, presence.DISCONNECT)
    return ws


async def _hook(hook: Any, client_id: str, ws: web.WebSocketResponse) -> None:
    """A connect/disconnect hook; one that fails is logged, the connection goes on."""
    if hook is None:
        return
    try:
        await hook(client_id, ws)
    except Exception:
        log.exception("websocket %s: connection hook failed", client_id)
