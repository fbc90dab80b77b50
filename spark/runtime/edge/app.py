"""The aiohttp application: routes, HTTP semantics, and a server to start and stop.

Routes: `POST /{service}` and `GET /{service}/ws`; `POST /` and `GET /ws` for the default
service; `GET /health`; `GET /metrics`; `GET /dashboard` and its parts
(spark.runtime.edge.dashboard). HTTP status codes carry transport facts only: JSON-RPC
errors are 200 with an error body, no reply is 204, an oversize body is 413, a missing or
wrong token 401, an unknown route or invalid service name 404; the bodies of
413/401/404 are JSON-RPC error objects too, so a client can read them the same way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import PayloadEncodingError
from aiohttp.web_protocol import RequestPayloadError

from spark import tracing
from spark.broker.retrying import OutageLog
from spark.errors import (
    InternalError,
    MethodNotFoundError,
    ParseError,
    RequestTooLargeError,
    RpcError,
    UnauthorizedError,
)
from spark.protocol import encode_error
from spark.protocol.wire import IDEMPOTENCY_HEADER, TIMEOUT_HEADER, TIMEOUT_QUERY
from spark.runtime.edge import dashboard
from spark.runtime.edge.config import EdgeConfig
from spark.runtime.edge.core import Edge, request_options, valid_service
from spark.runtime.edge.security import server_ssl_context
from spark.runtime.edge.websocket import serve_websocket
from spark.runtime.metrics import CONTENT_TYPE

if TYPE_CHECKING:
    from spark.runtime.inprocess import InProcessService

log = logging.getLogger("spark.edge")

EDGE_KEY = web.AppKey("spark_edge", Edge)
JSON = "application/json"


def _error(status: int, err: RpcError, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=encode_error(None, err), content_type=JSON, headers=headers
    )


def _unauthorized() -> web.Response:
    return _error(
        401, UnauthorizedError("missing or invalid bearer token"), {"WWW-Authenticate": "Bearer"}
    )


def _service_of(edge: Edge, request: web.Request) -> str | web.Response:
    service = request.match_info.get("service") or edge.config.default_service
    if not service:
        return _error(404, MethodNotFoundError("no default service: use /{service}"))
    if not valid_service(service):
        return _error(404, MethodNotFoundError("invalid service name", data={"service": service}))
    return service


@web.middleware
async def _count_and_guard(request: web.Request, handler: Any) -> web.StreamResponse:
    """Counts responses by status; an unexpected failure becomes a 500, never a dead edge."""
    edge = request.app[EDGE_KEY]
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        edge.metrics.http.inc(str(exc.status))
        raise
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("edge failed on %s %s", request.method, request.path)
        edge.metrics.http.inc("500")
        return _error(500, InternalError())
    edge.metrics.http.inc(str(response.status))
    return response


async def handle_post(request: web.Request) -> web.StreamResponse:
    edge = request.app[EDGE_KEY]
    service = _service_of(edge, request)
    if isinstance(service, web.Response):
        return service
    if not edge.tokens.allows(request):
        return _unauthorized()
    limit = edge.config.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return _error(413, RequestTooLargeError("body too large", data={"max_bytes": limit}))
    try:
        data = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _error(413, RequestTooLargeError("body too large", data={"max_bytes": limit}))
    except (RequestPayloadError, PayloadEncodingError):
        # A body that does not decode with its Content-Encoding: the client's fault.
        return _error(400, ParseError("body does not decode with its Content-Encoding"))
    parsed = edge.parse(data)
    body = await edge.run(
        service,
        parsed,
        transport="http",
        timeout=edge.timeout_for(
            request.headers.get(TIMEOUT_HEADER)
            # Parsing the query costs on every request: only when there is one.
            or (request.query.get(TIMEOUT_QUERY) if request.query_string else None)
        ),
        idempotency_key=request.headers.get(IDEMPOTENCY_HEADER) or None,
        options=request_options(data, parsed),
        principal=edge.tokens.principal(request),
        trace=tracing.carrier_of(request.headers) if tracing.ENABLED else None,
    )
    if body is None:
        return web.Response(status=204)
    return web.Response(body=body, content_type=JSON)


async def handle_ws(request: web.Request) -> web.StreamResponse:
    edge = request.app[EDGE_KEY]
    service = _service_of(edge, request)
    if isinstance(service, web.Response):
        return service
    if not edge.tokens.allows(request, query=True):
        return _unauthorized()
    return await serve_websocket(edge, request, service)


async def handle_health(request: web.Request) -> web.Response:
    ok, doc = await request.app[EDGE_KEY].health()
    return web.Response(status=200 if ok else 503, body=orjson.dumps(doc), content_type=JSON)


async def handle_metrics(request: web.Request) -> web.Response:
    edge = request.app[EDGE_KEY]
    if edge.config.protect_metrics and not edge.tokens.allows(request):
        return _unauthorized()
    return web.Response(
        body=edge.metrics.render(),
        headers={"Content-Type": CONTENT_TYPE},
    )


def make_app(edge: Edge) -> web.Application:
    # aiohttp's own body limit is set one byte above ours so handle_post answers the 413.
    app = web.Application(
        client_max_size=edge.config.max_body_bytes + 1, middlewares=[_count_and_guard]
    )
    app[EDGE_KEY] = edge
    app.cleanup_ctx.append(edge.cleanup_ctx)

    async def on_shutdown(app: web.Application) -> None:
        await edge.close_sockets()

    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/health", handle_health)
    app.router.add_get("/metrics", handle_metrics)
    dashboard.setup(app, edge)
    app.router.add_post("/", handle_post)
    app.router.add_get("/ws", handle_ws)
    app.router.add_post("/{service}", handle_post)
    app.router.add_get("/{service}/ws", handle_ws)
    return app


class EdgeServer:
    """An edge listening on a port: `await start()` returns once it accepts connections.

    `local` serves one node in this process with no broker (see `Edge`).
    """

    def __init__(self, config: EdgeConfig, local: InProcessService | None = None):
        self.edge = Edge(config, local)
        self.config = self.edge.config
        self.app = make_app(self.edge)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        #: Failing accepts (descriptor limit reached), logged at a steady rate.
        self.accept_errors = OutageLog("accepting connections", log)
        self._restore_handler: Callable[[], None] | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.config.tls else "http"
        host = self.config.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> EdgeServer:
        cfg = self.config
        ssl_ctx = (
            server_ssl_context(cfg.ssl_certfile, cfg.ssl_keyfile, cfg.ssl_ca_certs)
            if cfg.tls
            else None
        )
        runner = web.AppRunner(
            self.app,
            handle_signals=False,
            shutdown_timeout=cfg.shutdown_timeout,
            access_log=None,
            # A client that disconnects cancels its request (and, through the broker
            # client, the handler running it): nobody is left to read the answer.
            handler_cancellation=True,
            # aiohttp arms this timer when a connection opens and after each response, and
            # closes a connection still waiting for a complete request when it fires: the
            # header timeout (slowloris) and the idle keep-alive timeout in one.
            keepalive_timeout=cfg.idle_timeout,
        )
        self._quiet_accept_errors()
        await runner.setup()
        try:
            site = web.TCPSite(runner, cfg.host, cfg.port, ssl_context=ssl_ctx)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self.port = _bound_port(runner, cfg.port)
        log.info("edge listening on %s (default service %r)", self.url, cfg.default_service)
        return self

    async def stop(self) -> None:
        """Stop listening, let requests in flight finish (up to shutdown_timeout), close."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        if self._restore_handler is not None:
            self._restore_handler()
            self._restore_handler = None

    def _quiet_accept_errors(self) -> None:
        """Log failing accepts (out of descriptors) at a steady rate, not with a traceback
        per attempt: asyncio retries accepting every second per listening socket."""
        loop = asyncio.get_running_loop()
        previous = loop.get_exception_handler()
        outage = self.accept_errors

        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            if str(context.get("message", "")).startswith("socket.accept() out of system"):
                outage.failed(context.get("exception") or OSError(context["message"]))
            elif previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(handler)

        def restore() -> None:
            if loop.get_exception_handler() is handler:
                loop.set_exception_handler(previous)

        self._restore_handler = restore

    async def __aenter__(self) -> EdgeServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _bound_port(runner: web.AppRunner, default: int) -> int:
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            return addr[1]
    return default


async def run_edge(
    config: EdgeConfig, *, stop: asyncio.Event | None = None, ready: asyncio.Event | None = None
) -> None:
    """Serve until `stop` is set (or the task is cancelled); the entry point of spark-edge."""
    server = await EdgeServer(config).start()
    if ready is not None:
        ready.set()
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        await server.stop()
