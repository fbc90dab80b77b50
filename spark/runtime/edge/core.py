"""The edge's state and its one job: run a JSON-RPC body against a service through Redis.

One `BrokerClient` per edge serves every HTTP request and WebSocket connection. The
caller's JSON-RPC ids stay here: the broker uses its own request ids and `encode_reply`
puts the caller's ids back. A batch's requests run concurrently.

A request object may carry an extra member `"spark": {"timeout": seconds, "idempotency_key":
key, "trace": {"traceparent": ...}}` (the WebSocket transport sends it on every call; JSON-RPC
ignores unknown members): its own budget (never more than the edge allows), key and W3C trace
context. It is read only when present. Plain HTTP clients send `traceparent` headers.

When the caller goes away (an HTTP client disconnects, a WebSocket closes), requests still
running are cancelled on the workers, except those with an idempotency key: a client may
come back with the key (a retry) and is then answered from that run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
import redis.asyncio as aioredis

from spark import tracing
from spark.aio import cancel_and_wait, reraise_cancellation
from spark.broker import UNREACHABLE, connect, presence, registry, resolve_url
from spark.broker.connection import is_cluster_url
from spark.broker.keys import NOTIFY_PATTERN, ServiceKeys, check_name, client_channel
from spark.broker.memory import memory_status
from spark.broker.notify import Notification, NotificationListener
from spark.broker.retrying import REDIS_ERRORS
from spark.client.broker_client import BrokerClient
from spark.errors import (
    InternalError,
    OverloadedError,
    RpcError,
    ServiceUnavailableError,
    TransportError,
)
from spark.lru import LruDict
from spark.protocol import Parsed, Request, Response, encode_reply, parse_body
from spark.protocol.wire import SPARK_MEMBER, RequestOptions, read_spark_member
from spark.runtime.edge.config import EdgeConfig
from spark.runtime.edge.metrics import EdgeMetrics
from spark.runtime.edge.security import TokenCheck

if TYPE_CHECKING:
    from spark.runtime.edge.websocket import WsConnection
    from spark.runtime.inprocess import InProcessService

log = logging.getLogger("spark.edge")

#: Seconds an edge spends telling workers that a WebSocket client came or went.
ANNOUNCE_TIMEOUT = 1.0
#: Services remembered as having no listening worker (callers name any number).
MAX_UNHEARD = 1024
#: Announcements waiting to be published (Redis slow or down) before new ones are dropped.
MAX_ANNOUNCEMENTS = 10_000
#: Announcements published in one pipeline at most.
ANNOUNCE_BATCH = 100
#: Seconds an edge stops announcing a service's sockets after no worker heard one (its
#: workers have no WebSocket hooks): a service without hooks costs one PUBLISH a second.
UNHEARD_SECONDS = 1.0

#: Longest idempotency key accepted (it becomes part of a Redis key).
MAX_IDEMPOTENCY_KEY = 200
_SPARK_MEMBER_BYTES = f'"{SPARK_MEMBER}"'.encode()


def request_options(data: bytes | str, parsed: Parsed) -> list[RequestOptions] | None:
    """The `"spark"` member of each of `parsed.requests`, or None when no request has one.

    Costs a second parse only for bodies that mention the member at all.
    """
    if not parsed.requests:
        return None
    if isinstance(data, memoryview):
        data = bytes(data)
    marker = _SPARK_MEMBER_BYTES.decode() if isinstance(data, str) else _SPARK_MEMBER_BYTES
    if marker not in data:
        return None
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    docs = doc if parsed.is_batch else [doc]
    if not isinstance(docs, list) or len(docs) != len(parsed.items):
        return None
    return [
        read_spark_member(item_doc, MAX_IDEMPOTENCY_KEY)
        for item_doc, item in zip(docs, parsed.items, strict=True)
        if isinstance(item, Request)
    ]


def valid_service(name: str) -> bool:
    if name in _VALID_SERVICES:
        return True
    try:
        check_name("service name", name)
    except ValueError:
        return False
    if len(_VALID_SERVICES) < 1024:  # checked once per name; junk names stop adding
        _VALID_SERVICES.add(name)
    return True


_VALID_SERVICES: set[str] = set()


class Edge:
    """Everything one edge process shares: the broker client, metrics, WebSocket clients.

    With `local` (an `InProcessService`) the edge serves that one node in its own process:
    requests go straight to it and no broker is used at all.
    """

    def __init__(self, config: EdgeConfig, local: InProcessService | None = None):
        self.config = config.check()
        # In-process (`local`) there is no broker: nothing to resolve, or probe for.
        self.url = resolve_url(config.redis_url) if local is None else ""
        self.metrics = EdgeMetrics()
        self.tokens = TokenCheck(config.auth_tokens)
        self.local = local
        self.client: BrokerClient | InProcessService | None = None
        self.redis: aioredis.Redis | None = None
        self.listener: NotificationListener | None = None
        #: Open WebSocket connections by client id, and by the service they are connected to.
        self.sockets: dict[str, WsConnection] = {}
        self.by_service: dict[str, set[WsConnection]] = defaultdict(set)
        #: Awaited as `on_connect(client_id, ws)` / `on_disconnect(client_id, ws)` around
        #: each WebSocket connection (a node served in-process: its upstream-style hooks).
        self.on_connect: Callable[[str, Any], Awaitable[None]] | None = None
        self.on_disconnect: Callable[[str, Any], Awaitable[None]] | None = None
        #: (service, method, client id) of WebSocket arrivals and departures to publish for
        #: the workers (spark.broker.presence), in order, off the connections' path.
        self._announcements: asyncio.Queue[presence.Announcement] | None = None
        self._announcer: asyncio.Task[None] | None = None
        #: Announcements dropped because Redis fell MAX_ANNOUNCEMENTS behind.
        self.announcements_dropped = 0
        #: Announcements not published: no worker of their service listened a moment ago.
        self.announcements_skipped = 0
        self._unheard: LruDict[str, float] = LruDict(MAX_UNHEARD)
        self._announcements_behind = False

    # -- lifecycle (an aiohttp cleanup context) ------------------------------------------------

    async def open(self) -> None:
        if self.local is not None:
            self.client = self.local
            return
        self.client = BrokerClient(
            self.url,
            max_backlog=self.config.max_backlog,
            max_backlog_bytes=self.config.max_backlog_bytes,
        )
        self.redis = connect(self.url, max_connections=4)
        # Sharded pub/sub (a cluster) has no patterns: there the edge subscribes to the
        # channels of its WebSocket clients and of their services as they come and go.
        self.listener = NotificationListener(
            self.url,
            self.on_notification,
            patterns=[] if is_cluster_url(self.url) else [NOTIFY_PATTERN],
        )
        # Bounded wait: with Redis down the edge still starts (and /health says 503).
        await self.listener.start(timeout=5.0)
        self._announcements = asyncio.Queue(MAX_ANNOUNCEMENTS)
        self._announcer = asyncio.create_task(self._announce(), name="spark-edge-announcer")

    async def close_sockets(self) -> None:
        for conn in list(self.sockets.values()):
            await conn.close(going_away=True)

    async def close(self) -> None:
        await self.close_sockets()
        if self._announcer is not None and self._announcements is not None:
            # The departures of the sockets just closed, while Redis is still open.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ANNOUNCE_TIMEOUT):
                    await self._announcements.join()
            await cancel_and_wait(self._announcer)
            self._announcer = None
        if self.listener is not None:
            await self.listener.aclose()
        if self.client is not None and self.local is None:
            await self.client.aclose()
        if self.redis is not None:
            await self.redis.aclose()

    async def cleanup_ctx(self, app: Any):
        await self.open()
        yield
        await self.close()

    # -- WebSocket registry --------------------------------------------------------------

    def register(self, conn: WsConnection) -> None:
        self.sockets[conn.client_id] = conn
        self.by_service[conn.service].add(conn)
        self.metrics.ws_clients.inc(conn.service)

    async def subscribe(self, conn: WsConnection) -> None:
        """On a cluster, subscribe to what this connection may be sent (sharded channels)."""
        if self.listener is not None and self.listener.sharded:
            await self.listener.add(
                client_channel(conn.client_id), ServiceKeys.for_service(conn.service).notify
            )

    def announce(self, conn: WsConnection, method: str) -> None:
        """Tell the workers of the connection's service that it connected or left
        (`spark.broker.presence`), when there is a broker. Queued, never waited for."""
        if self._announcements is None:
            return
        until = self._unheard.get(conn.service)
        if until is not None and until > time.monotonic():
            self.announcements_skipped += 1
            return
        try:
            self._announcements.put_nowait((conn.service, method, conn.client_id))
        except asyncio.QueueFull:
            self.announcements_dropped += 1
            if not self._announcements_behind:  # one line per episode
                self._announcements_behind = True
                log.warning("redis is %d presence messages behind: dropping", MAX_ANNOUNCEMENTS)

    async def _announce(self) -> None:
        """Publish the queued announcements, in order (it matters to the hooks), as many as
        are waiting at once. Best effort: what Redis does not take within
        ANNOUNCE_TIMEOUT is lost."""
        assert self._announcements is not None and self.redis is not None
        queue, redis = self._announcements, self.redis
        while True:
            if queue.empty():
                self._announcements_behind = False
            batch = [await queue.get()]
            while not queue.empty() and len(batch) < ANNOUNCE_BATCH:
                batch.append(queue.get_nowait())
            try:
                async with asyncio.timeout(ANNOUNCE_TIMEOUT):
                    heard = await presence.publish_many(redis, batch)
                now = time.monotonic()
                for (service, _, _), listeners in zip(batch, heard, strict=True):
                    if listeners:
                        self._unheard.pop(service, None)
                    else:
                        self._unheard[service] = now + UNHEARD_SECONDS
            except (TimeoutError, *REDIS_ERRORS) as exc:
                reraise_cancellation()
                log.debug("%d websocket announcements lost (%s)", len(batch), exc)
            finally:
                for _ in batch:
                    queue.task_done()

    def unregister(self, conn: WsConnection) -> None:
        if self.sockets.pop(conn.client_id, None) is None:
            return
        sharded = self.listener is not None and self.listener.sharded
        if sharded:
            self.listener.discard(client_channel(conn.client_id))
        group = self.by_service.get(conn.service)
        if group is not None:
            group.discard(conn)
            if not group:
                del self.by_service[conn.service]
                if sharded:
                    self.listener.discard(ServiceKeys.for_service(conn.service).notify)
        self.metrics.ws_clients.dec(conn.service)

    def on_notification(self, note: Notification) -> None:
        """Route one notification from Redis to the WebSocket connections it is for."""
        if note.client_id is not None:
            conn = self.sockets.get(note.client_id)
            targets = [conn] if conn is not None else []
        elif note.service is not None and note.channel == _service_channel(note.service):
            targets = list(self.by_service.get(note.service, ()))
        else:
            targets = []
        if not targets:
            return
        payload = note.to_jsonrpc().decode()
        for conn in targets:
            kind = "forwarded" if conn.push(payload) else "dropped"
            self.metrics.notifications.inc(kind)

    # -- running bodies ------------------------------------------------------------------

    def timeout_for(self, requested: str | None) -> float:
        """The edge's default, or the caller's (shorter) budget in seconds."""
        default = self.config.request_timeout
        if not requested:
            return default
        try:
            value = float(requested)
        except ValueError:
            return default
        if not value > 0:  # also rejects NaN
            return default
        return min(value, default)

    def parse(self, data: bytes) -> Parsed:
        return parse_body(data, max_batch=self.config.max_batch)

    async def run(
        self,
        service: str,
        parsed: Parsed,
        *,
        transport: str,
        timeout: float,
        idempotency_key: str | None = None,
        client_id: str | None = None,
        options: list[RequestOptions] | None = None,
        principal: str | None = None,
        trace: dict[str, str] | None = None,
    ) -> bytes | None:
        """The reply body for `parsed` (None when nothing is to be sent back).

        `options` (from `request_options`) gives requests their own budget, key and trace
        context; `trace` is the W3C context of the whole body (HTTP headers). Idempotency
        keys are scoped to `principal` (see `TokenCheck.principal`).
        """
        for item in parsed.items:
            if isinstance(item, Response):
                self.metrics.record(service, "-", transport, str(item.error["code"]), None)
        requests = parsed.requests
        if not requests:
            return encode_reply(parsed, [])
        now = time.time()
        deadline = now + timeout
        if idempotency_key is not None and len(idempotency_key) > MAX_IDEMPOTENCY_KEY:
            idempotency_key = None
        if options is not None and len(options) != len(requests):
            options = None

        def scoped(key: str | None) -> str | None:
            # One caller's key never answers another's request (see TokenCheck.principal).
            return f"{principal}/{key}" if key is not None and principal else key

        if options is None and len(requests) == 1:  # the usual case, without the planning
            outcome = await self.one(
                service,
                requests[0],
                transport,
                deadline,
                scoped(idempotency_key),
                trace,
                client_id,
            )
            return encode_reply(parsed, [outcome])

        def plan(i: int) -> tuple[float, str | None, dict[str, str] | None]:
            key = idempotency_key
            if key is not None and len(requests) > 1:
                key = f"{key}:{i}"
            if options is None:
                return deadline, scoped(key), trace
            own_timeout, own_key, own_trace = options[i]
            if own_timeout is not None:
                own_deadline = now + min(own_timeout, timeout)
            else:
                own_deadline = deadline
            return own_deadline, scoped(own_key or key), own_trace or trace

        if len(requests) == 1:
            outcomes = [await self.one(service, requests[0], transport, *plan(0), client_id)]
        else:
            outcomes = await asyncio.gather(
                *(
                    self.one(service, req, transport, *plan(i), client_id)
                    for i, req in enumerate(requests)
                )
            )
        return encode_reply(parsed, outcomes)

    def overloaded(self, service: str, parsed: Parsed, transport: str) -> bytes | None:
        """The reply refusing every request of `parsed` (too many in flight)."""
        err = OverloadedError("too many requests in flight on this connection")
        for req in parsed.requests:
            self.metrics.record(service, req.method, transport, str(err.code), None)
        return encode_reply(parsed, [err] * len(parsed.requests))

    async def one(
        self,
        service: str,
        req: Request,
        transport: str,
        deadline: float,
        idempotency_key: str | None,
        trace: dict[str, str] | None,
        client_id: str | None,
    ) -> Any:
        """One request's outcome: a result or an exception (returned, never raised); under a
        SERVER span continuing `trace` when tracing is on."""
        if tracing.ENABLED and tracing.wanted(trace):
            with tracing.server_span(
                trace, service, req.method, req.id, name=f"edge {service}/{req.method}"
            ) as span:
                outcome = await self._one(
                    service, req, transport, deadline, idempotency_key, client_id
                )
                span.answered(str(outcome.code) if isinstance(outcome, RpcError) else "ok")
                return outcome
        return await self._one(service, req, transport, deadline, idempotency_key, client_id)

    async def _one(
        self,
        service: str,
        req: Request,
        transport: str,
        deadline: float,
        idempotency_key: str | None,
        client_id: str | None,
    ) -> Any:
        assert self.client is not None
        started = time.perf_counter()
        code = "ok"
        outcome: Any = None
        self.metrics.inflight.inc(transport)
        try:
            if req.is_notification:
                await self.client.notify(
                    service, req.method, req.params, deadline=deadline, idempotency_key=None
                )
            else:
                outcome = await self.client.call(
                    service,
                    req.method,
                    req.params,
                    deadline=deadline,
                    idempotency_key=idempotency_key,
                    require_workers=True,
                    client_id=client_id,
                    # A keyed request outlives its caller: a retry with the key gets its answer.
                    cancel_on_abort=idempotency_key is None,
                )
        except RpcError as exc:
            outcome, code = exc, str(exc.code)
        except (TransportError, *UNREACHABLE) as exc:
            log.warning("broker unreachable for %s.%s: %s", service, req.method, exc)
            outcome = ServiceUnavailableError(
                "the message broker is unreachable", data={"service": service}
            )
            code = str(outcome.code)
        except Exception:
            log.exception("edge failed on %s.%s", service, req.method)
            outcome = InternalError()
            code = str(outcome.code)
        finally:
            self.metrics.inflight.dec(transport)
        if req.is_notification:
            if code != "ok":
                log.warning("notification %s.%s not delivered: %s", service, req.method, outcome)
            self.metrics.record(service, req.method, transport, code, None)
            return None
        self.metrics.record(service, req.method, transport, code, time.perf_counter() - started)
        return outcome

    # -- health --------------------------------------------------------------------------

    async def health(self) -> tuple[bool, dict[str, Any]]:
        doc: dict[str, Any] = {
            "default_service": self.config.default_service,
            "websocket_clients": len(self.sockets),
        }
        if self.local is not None:
            doc.update(self.local.health())
            return True, doc
        assert self.redis is not None
        try:
            async with asyncio.timeout(2.0):
                await self.redis.ping()
                names = await registry.services(self.redis)
                if self.config.default_service and self.config.default_service not in names:
                    names.append(self.config.default_service)
                counts = [
                    await registry.live_count(self.redis, ServiceKeys.for_service(n)) for n in names
                ]
            memory = await memory_status(self.redis)
        except (TimeoutError, *UNREACHABLE) as exc:
            doc.update(status="unavailable", redis="unreachable", error=str(exc) or "timeout")
            return False, doc
        doc.update(services=dict(zip(names, counts, strict=True)))
        if memory is not None and memory.full:
            # Redis refuses writes: every request would be refused as overloaded.
            doc.update(status="unavailable", redis="out of memory")
            return False, doc
        doc.update(status="ok", redis="ok")
        return True, doc


def _service_channel(service: str) -> str | None:
    try:
        return ServiceKeys.for_service(service).notify
    except ValueError:
        return None
