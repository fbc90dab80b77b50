"""`HttpTransport`: JSON-RPC over HTTP POST to a spark-edge (or any JSON-RPC 2.0 server).

Endpoint rules (shared with the WebSocket transport): `http://host:port` calls the edge's
default service, `http://host:port/service` that service; `service=` appends the service
to an endpoint without a path. One aiohttp session per transport, made on first use and
closed by `aclose()`. The deadline is absolute (epoch seconds): the transport stops
waiting at it and sends what is left of it as `X-Spark-Timeout`, so the edge and the
worker give up at the same time. A call's `timeout` (one attempt of a retried call) only
shortens the wait here. A call with an idempotency key is left running by the edge when
this client goes away early, so a retry with the key gets its answer; without a key, the
edge cancels it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson

from spark import tracing
from spark.client.transport import Call, CallOutcome, NotificationHandler
from spark.errors import (
    RpcConnectionError,
    RpcError,
    RpcTimeoutError,
    UnauthorizedError,
)
from spark.lifetime import close_with_loop
from spark.protocol import (
    ProtocolError,
    Request,
    Response,
    encode_notification,
    encode_request,
    parse_response,
)
from spark.protocol.wire import IDEMPOTENCY_HEADER, TIMEOUT_HEADER

JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


def http_url(endpoint: str, service: str | None = None) -> str:
    """`endpoint` with `/service` appended when it has no path of its own."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"endpoint must be an http:// or https:// URL, got {endpoint!r}")
    path = parts.path.rstrip("/")
    if not path and service:
        path = "/" + service
    return urlunsplit((parts.scheme, parts.netloc, path or "/", parts.query, ""))


def ws_url(endpoint: str, service: str | None = None, ws_endpoint: str | None = None) -> str:
    """The WebSocket URL: `ws_endpoint`, else the HTTP URL with ws(s):// and `/ws` appended."""
    if ws_endpoint:
        return ws_endpoint
    parts = urlsplit(http_url(endpoint, service))
    scheme = "wss" if parts.scheme == "https" else "ws"
    path = parts.path.rstrip("/") + "/ws"
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def client_ssl_context(
    *,
    verify_ssl: bool = True,
    ssl_ca_certs: str | None = None,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
) -> ssl.SSLContext | bool | None:
    """What aiohttp's `ssl=` gets: None for its defaults, False to skip verification, or a
    context (own CA bundle, client certificate for mutual TLS)."""
    if not (ssl_ca_certs or ssl_certfile):
        return None if verify_ssl else False
    ctx = ssl.create_default_context(cafile=ssl_ca_certs)
    if not verify_ssl:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if ssl_certfile:
        ctx.load_cert_chain(ssl_certfile, ssl_keyfile)
    return ctx


def remaining(deadline: float) -> float:
    left = deadline - time.time()
    if left <= 0:
        raise RpcTimeoutError("deadline already passed")
    return left


CONNECTION_ERRORS = (aiohttp.ClientError, OSError)


class _Base:
    """Session handling shared by the HTTP and WebSocket transports."""

    def __init__(
        self,
        endpoint: str,
        *,
        service: str | None = None,
        ws_endpoint: str | None = None,
        headers: Mapping[str, str] | None = None,
        verify_ssl: bool = True,
        ssl_ca_certs: str | None = None,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        on_notification: NotificationHandler | None = None,
        connect_timeout: float | None = None,
    ):
        self.endpoint = endpoint
        #: Seconds to open a connection (TCP + TLS, and the WebSocket handshake).
        self.connect_timeout = connect_timeout
        self.service = service
        self.url = http_url(endpoint, service)
        self.ws_url = ws_url(endpoint, service, ws_endpoint)
        self.headers = dict(headers or {})
        self.on_notification = on_notification
        self._ssl = client_ssl_context(
            verify_ssl=verify_ssl,
            ssl_ca_certs=ssl_ca_certs,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
        )
        self._session: aiohttp.ClientSession | None = None
        self._ids = itertools.count(1)
        self._closed = False

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RpcConnectionError("transport closed")
        if self._session is None or self._session.closed:
            close_with_loop(self)
            connector = aiohttp.TCPConnector(ssl=self._ssl, limit=0)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=self.headers,
                json_serialize=None,
                timeout=aiohttp.ClientTimeout(total=None, connect=self.connect_timeout),
            )
        return self._session

    def next_id(self) -> int:
        return next(self._ids)

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def close(self) -> None:
        """Upstream's name for `aclose()`."""
        await self.aclose()

    def is_connected(self) -> bool:
        """Upstream's check: a session is open (HTTP) or the socket is (WebSocket)."""
        return self._session is not None and not self._session.closed

    def __del__(self) -> None:
        # A transport dropped without aclose() (a proxy in a short script) still releases its
        # sockets; aclose() remains the way to close one cleanly.
        session = getattr(self, "_session", None)  # None when __init__ failed
        if session is not None and not session.closed:
            with contextlib.suppress(Exception):
                session.connector._close(abort_ssl=True)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _error_for_status(status: int, url: str, body: bytes) -> Exception:
    """An answer that is not a JSON-RPC reply: what went wrong, as our exceptions."""
    try:
        reply = parse_response(body)
    except RpcError:
        reply = None
    if isinstance(reply, Response) and reply.error is not None:
        return RpcError.from_dict(reply.error)
    if status == 401:
        return UnauthorizedError(f"{url} refused the credentials (HTTP 401)")
    return RpcConnectionError(f"{url} answered HTTP {status}")


class HttpTransport(_Base):
    """One request per HTTP POST; concurrent calls share the session's connection pool."""

    async def _post(
        self,
        body: bytes,
        deadline: float,
        extra: dict[str, str] | None = None,
        wait: float | None = None,
    ) -> tuple[int, bytes]:
        left = remaining(deadline)
        headers = {**JSON_HEADERS, TIMEOUT_HEADER: f"{left:.3f}", **(extra or {})}
        if tracing.ENABLED:
            headers.update(tracing.inject() or ())
        waiting = left if wait is None else max(0.0, min(wait, left))
        try:
            async with asyncio.timeout(waiting):
                async with self.session.post(self.url, data=body, headers=headers) as resp:
                    return resp.status, await resp.read()
        except TimeoutError:
            raise RpcTimeoutError(f"no answer from {self.url} within {waiting:.3g}s") from None
        except CONNECTION_ERRORS as exc:
            raise RpcConnectionError(f"cannot reach {self.url}: {exc}") from exc

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
        rid = self.next_id()
        extra = {IDEMPOTENCY_HEADER: idempotency_key} if idempotency_key else None
        status, body = await self._post(
            encode_request(method, params, id=rid), deadline, extra, timeout
        )
        if status != 200:
            raise _error_for_status(status, self.url, body)
        reply = parse_response(body)
        if not isinstance(reply, Response):
            raise ProtocolError("batch reply to a single request")
        if reply.id != rid and reply.error is None:
            raise ProtocolError(f"reply id {reply.id!r} does not match request id {rid!r}")
        return reply.unwrap()

    async def notify(
        self, method: str, params: Any = None, *, deadline: float, state: str | None = None
    ) -> None:
        status, body = await self._post(encode_notification(method, params), deadline)
        if status == 204:
            return
        raise _error_for_status(status, self.url, body)

    async def batch(self, calls: list[Call], *, deadline: float) -> list[CallOutcome]:
        """Every call in one POST; per-call errors (and a failed POST) are outcomes."""
        if not calls:
            return []
        ids: list[int | None] = []
        items = []
        for c in calls:
            if c.notify:
                ids.append(None)
                items.append(Request.notification(c.method, c.params).to_dict())
            else:
                rid = self.next_id()
                ids.append(rid)
                req = Request(c.method, c.params, rid)
                # Each item's own key rides in the extra member the edge reads.
                items.append(
                    {**req.to_dict(), "spark": {"idempotency_key": c.idempotency_key}}
                    if c.idempotency_key
                    else req.to_dict()
                )
        try:
            status, body = await self._post(orjson.dumps(items), deadline)
            if status == 204:
                replies: list[Response] = []
            elif status != 200:
                raise _error_for_status(status, self.url, body)
            else:
                parsed = parse_response(body)
                if isinstance(parsed, Response):
                    # One object for a batch: the batch itself was refused.
                    if parsed.error is None:
                        raise ProtocolError("single result for a batch")
                    raise RpcError.from_dict(parsed.error)
                replies = parsed
        except Exception as exc:
            return [CallOutcome() if rid is None else CallOutcome(error=exc) for rid in ids]
        by_id = {r.id: r for r in replies}
        outcomes = []
        for rid in ids:
            if rid is None:
                outcomes.append(CallOutcome())
                continue
            reply = by_id.get(rid)
            if reply is None:
                outcomes.append(CallOutcome(error=ProtocolError(f"no reply for id {rid}")))
            elif reply.error is not None:
                outcomes.append(CallOutcome(error=RpcError.from_dict(reply.error)))
            else:
                outcomes.append(CallOutcome(result=reply.result))
        return outcomes
