"""`RpcNode.start_server()`: one node served behind its own edge, in this process.

`NodeServer(node)` starts an in-process worker for the node (`run_worker`) and an edge
whose default service is the node's, on `node.host:node.port` with the node's TLS files.
`start()` returns once the worker is registered and the port accepts connections;
`stop()` closes the port, lets requests in flight finish, then drains the worker.

With no `node.redis_url` (and no `$SPARK_REDIS_URL`) both use the embedded broker, so a
node serves HTTP and WebSocket clients with nothing else installed.

The node is duck-typed (anything with `handle_rpc`, `service`, `runtime`): the runtime
never imports spark.nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from typing import Any

from spark.broker import resolve_url
from spark.runtime.edge import EdgeConfig, EdgeServer
from spark.runtime.worker import run_worker, service_of

log = logging.getLogger("spark.server")


class NodeServer:
    def __init__(self, node: Any, **edge_options: Any):
        """`edge_options` are extra `EdgeConfig` fields (auth_tokens, max_body_bytes...)."""
        self.node = node
        self.url = resolve_url(getattr(node, "redis_url", None))
        self.service = service_of(node)
        self.edge_options = edge_options
        self.worker_options: dict[str, Any] = edge_options.pop("worker_options", {})
        self.edge: EdgeServer | None = None
        self._worker: asyncio.Task | None = None
        self._stop = asyncio.Event()

    @property
    def port(self) -> int | None:
        return self.edge.port if self.edge is not None else None

    @property
    def endpoint(self) -> str | None:
        return self.edge.url if self.edge is not None else None

    async def start(self) -> NodeServer:
        if self._worker is not None:
            raise RuntimeError("server already started")
        node = self.node
        ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._worker = asyncio.create_task(
            run_worker(
                node,
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
        config = EdgeConfig(
            redis_url=self.url,
            host=getattr(node, "host", "127.0.0.1"),
            port=getattr(node, "port", 8000),
            default_service=self.service,
            ssl_certfile=getattr(node, "ssl_certfile", None),
            ssl_keyfile=getattr(node, "ssl_keyfile", None),
            ssl_ca_certs=getattr(node, "ssl_ca_certs", None),
            **self.edge_options,
        )
        edge = EdgeServer(config)
        edge.edge.on_connect = _hook_of(node, "on_websocket_connect")
        edge.edge.on_disconnect = _hook_of(node, "on_websocket_disconnect")
        try:
            self.edge = await edge.start()
        except BaseException:
            await self._stop_worker()
            raise
        log.info("%s serving %r on %s", type(node).__name__, self.service, self.edge.url)
        return self

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

    async def _stop_worker(self) -> None:
        if self._worker is not None:
            worker, self._worker = self._worker, None
            self._stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await worker

    async def __aenter__(self) -> NodeServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _hook_of(node: Any, name: str) -> Any:
    """The node's `name(client_id, ws)` hook, called with `(client_id)` alone when that is
    all it takes (both forms appear in upstream's docs); None when it has none."""
    hook = getattr(node, name, None)
    if hook is None:
        return None
    try:
        positional = [
            p
            for p in inspect.signature(hook).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
    except (TypeError, ValueError):
        positional = []
    if len(positional) == 1:

        async def call_with_id(client_id: str, _ws: Any) -> None:
            await hook(client_id)

        return call_with_id
    return hook
