"""`RpcNode.start_server()`: one node served behind its own edge, in this process.

`NodeServer(node)` serves the node on `node.host:node.port` (with the node's TLS files)
through an edge whose default service is the node's. `start()` returns once the port
accepts connections; `stop()` closes the port, lets requests in flight finish, then stops
the node (its `on_stop` hook).

Two ways, one behaviour for callers:

- no broker URL (no `node.redis_url`, no `$SPARK_REDIS_URL`): in-process. The edge hands
  requests straight to the node (spark.runtime.inprocess); nothing else is started.
- a broker URL (`memory://...` included): an edge plus an in-process worker on that
  broker, so the node is one more worker of its service, reachable over the broker
  (`transport="redis"`) as well as over HTTP and WebSocket.

The node is typed by what the server reads from it, `ServedNode` (an RpcNode is one), and
given its runtime and service name like a worker's target (`spark.runtime.host.bind`): the
runtime never imports spark.nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Any, Protocol, runtime_checkable

from spark.broker import resolve_url
from spark.broker.connection import ENV_URL
from spark.broker.queue import DEFAULT_MAX_BACKLOG
from spark.runtime.edge import EdgeConfig, EdgeServer
from spark.runtime.host import Servable, bind, call_on_start, call_on_stop
from spark.runtime.inprocess import InProcessHost, InProcessService
from spark.runtime.presence import socket_hook
from spark.runtime.worker import WorkerConfig, run_worker, service_of

log = logging.getLogger("spark.server")

_WORKER_DEFAULTS = WorkerConfig(service="-")


@runtime_checkable
class ServedNode(Servable, Protocol):
    """What `NodeServer` reads from the node it serves (an RpcNode's constructor arguments
    and WebSocket hooks). Read-only here: the server never changes them."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...

    @property
    def ssl_certfile(self) -> str | None: ...

    @property
    def ssl_keyfile(self) -> str | None: ...

    @property
    def ssl_ca_certs(self) -> str | None: ...

    @property
    def redis_url(self) -> str | None: ...

    async def on_websocket_connect(self, client_id: str, websocket: Any) -> None: ...

    async def on_websocket_disconnect(self, client_id: str, websocket: Any = None) -> None: ...


class NodeServer:
    def __init__(self, node: ServedNode, **edge_options: Any):
        """`edge_options` are extra `EdgeConfig` fields (auth_tokens, max_body_bytes...),
        and `worker_options` (a dict of `WorkerConfig` fields; in-process only
        `concurrency`, `grace` and `idempotency_ttl` apply)."""
        if not isinstance(node, ServedNode):
            raise TypeError(f"{type(node).__name__} cannot be served by start_server()")
        self.node = node
        explicit = node.redis_url or os.environ.get(ENV_URL)
        #: Whether the node is served in this process with no broker (see the module doc).
        self.in_process = not explicit
        self.url = resolve_url(explicit) if explicit else None
        self.service = service_of(node)
        self.edge_options = edge_options
        self.worker_options: dict[str, Any] = edge_options.pop("worker_options", {})
        self.edge: EdgeServer | None = None
        self._worker: asyncio.Task | None = None
        self._local: InProcessService | None = None
        self._host: InProcessHost | None = None
        self._stop = asyncio.Event()

    @property
    def port(self) -> int | None:
        return self.edge.port if self.edge is not None else None

    @property
    def endpoint(self) -> str | None:
        return self.edge.url if self.edge is not None else None

    def _edge(self, local: InProcessService | None = None) -> EdgeServer:
        """The node's edge, with the node's WebSocket hooks."""
        node = self.node
        config = EdgeConfig(
            redis_url=self.url,
            host=node.host,
            port=node.port,
            default_service=self.service,
            ssl_certfile=node.ssl_certfile,
            ssl_keyfile=node.ssl_keyfile,
            ssl_ca_certs=node.ssl_ca_certs,
            **self.edge_options,
        )
        edge = EdgeServer(config, local=local)
        if local is not None:
            # In-process the edge runs the hooks itself, with the socket. Through a broker
            # the node's worker runs them from the edge's presence messages, like every
            # worker of the service (spark.runtime.presence): `ws` is None there.
            edge.edge.on_connect = socket_hook(node.on_websocket_connect)
            edge.edge.on_disconnect = socket_hook(node.on_websocket_disconnect)
        return edge

    async def start(self) -> NodeServer:
        if self._worker is not None or self._local is not None:
            raise RuntimeError("server already started")
        if self.in_process:
            await self._start_in_process()
        else:
            await self._start_with_worker()
        assert self.edge is not None
        how = "in-process" if self.in_process else "through its broker"
        log.info(
            "%s serving %r %s on %s", type(self.node).__name__, self.service, how, self.edge.url
        )
        return self

    async def _start_in_process(self) -> None:
        node = self.node
        options = self.worker_options
        local = InProcessService(
            node,
            self.service,
            concurrency=options.get("concurrency", _WORKER_DEFAULTS.concurrency),
            max_backlog=self.edge_options.get("max_backlog", DEFAULT_MAX_BACKLOG),
            idempotency_ttl=options.get("idempotency_ttl", _WORKER_DEFAULTS.idempotency_ttl),
            grace=options.get("grace", _WORKER_DEFAULTS.grace),
        )
        edge = self._edge(local)
        host = InProcessHost(
            edge.edge.on_notification, service=self.service, threads=local.concurrency
        )
        bind(node, host, self.service)  # as run_worker does for a worker's target
        await call_on_start(node)
        self._local, self._host = local, host
        try:
            self.edge = await edge.start()
        except BaseException:
            await self._stop_in_process()
            raise

    async def _start_with_worker(self) -> None:
        ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._worker = asyncio.create_task(
            run_worker(
                self.node,
                service=self.service,
                url=self.url,
                stop=self._stop,
                ready=ready,
                **self.worker_options,
            ),
            name=f"spark-node-worker-{self.service}",
        )
        waiter = asyncio.ensure_future(ready.wait())
        await asyncio.wait({waiter, self._worker}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if self._worker.done():
            worker, self._worker = self._worker, None
            worker.result()  # raises what stopped it
            raise RuntimeError(f"worker for {self.service!r} stopped before it was ready")
        try:
            self.edge = await self._edge().start()
        except BaseException:
            await self._stop_worker()
            raise

    @property
    def websocket_clients(self) -> dict[str, Any]:
        """The open WebSocket connections of this server's edge, by client id."""
        if self.edge is None:
            return {}
        return {cid: conn.ws for cid, conn in self.edge.edge.sockets.items()}

    async def stop(self) -> None:
        if self.edge is not None:
            edge, self.edge = self.edge, None
            await edge.stop()
        await self._stop_worker()
        await self._stop_in_process()

    async def _stop_worker(self) -> None:
        if self._worker is not None:
            worker, self._worker = self._worker, None
            self._stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    async def _stop_in_process(self) -> None:
        local, self._local = self._local, None
        host, self._host = self._host, None
        if local is None:
            return
        try:
            await local.drain()
            await call_on_stop(self.node)
        finally:
            if host is not None:
                await host.aclose()

    async def __aenter__(self) -> NodeServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
