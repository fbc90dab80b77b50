"""`spark dev`: a whole deployment in one process, for local development.

One broker (the embedded `memory://` one unless a URL is given), one in-process worker per
node, and one edge in front of all of them whose default service is the first node's.
`DevServer(nodes).start()` returns once every worker is registered and the port accepts
connections; `stop()` closes the port, lets requests in flight finish, then drains the
workers. `run_dev()` does both around a stop event (what the CLI runs until SIGINT/SIGTERM).

Nodes are duck-typed like everywhere in the runtime: anything with `handle_rpc` (an RpcNode,
a plain Node); service names are derived as `spark-worker` derives them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from spark.broker import MEMORY_URL
from spark.runtime.edge import EdgeConfig, EdgeServer
from spark.runtime.worker import run_worker, service_of

log = logging.getLogger("spark.dev")


class DevServer:
    def __init__(
        self,
        nodes: Sequence[Any],
        *,
        url: str | None = None,
        host: str = "127.0.0.1",
        port: int = 8000,
        worker_options: dict[str, Any] | None = None,
        edge_options: dict[str, Any] | None = None,
    ):
        """`url`: the broker; None means the embedded one (never `$SPARK_REDIS_URL`: a
        development server should not join the queues of a deployment by accident)."""
        if not nodes:
            raise ValueError("spark dev needs at least one node to serve")
        self.nodes = list(nodes)
        self.services = [service_of(n) for n in self.nodes]
        dupes = sorted({s for s in self.services if self.services.count(s) > 1})
        if dupes:
            raise ValueError(f"two nodes serve the same service: {', '.join(dupes)}")
        self.url = url or MEMORY_URL
        self.host = host
        self.port = port
        self.worker_options = dict(worker_options or {})
        self.edge_options = dict(edge_options or {})
        self.edge: EdgeServer | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()

    @property
    def endpoint(self) -> str | None:
        """`http://host:port` once started."""
        return self.edge.url if self.edge is not None else None

    def urls(self) -> dict[str, str]:
        """The POST URL of every service."""
        if self.edge is None:
            return {}
        return {s: f"{self.edge.url}/{s}" for s in self.services}

    async def start(self) -> DevServer:
        if self._workers:
            raise RuntimeError("dev server already started")
        self._stop = asyncio.Event()
        readies = []
        for node, service in zip(self.nodes, self.services, strict=True):
            ready = asyncio.Event()
            readies.append(ready)
            self._workers.append(
                asyncio.create_task(
                    run_worker(
                        node,
                        service=service,
                        url=self.url,
                        stop=self._stop,
                        ready=ready,
                        **self.worker_options,
                    ),
                    name=f"spark-dev-worker-{service}",
                )
            )
        try:
            await self._wait_ready(readies)
            config = EdgeConfig(
                redis_url=self.url,
                host=self.host,
                port=self.port,
                default_service=self.services[0],
                **self.edge_options,
            )
            self.edge = await EdgeServer(config).start()
        except BaseException:
            await self._stop_workers()
            raise
        log.info("dev server on %s serving %s", self.edge.url, ", ".join(self.services))
        return self

    async def _wait_ready(self, readies: list[asyncio.Event]) -> None:
        waiters = [asyncio.ensure_future(r.wait()) for r in readies]
        try:
            pending = set(waiters)
            while pending:
                done, _ = await asyncio.wait(
                    pending | set(self._workers), return_when=asyncio.FIRST_COMPLETED
                )
                for task, service in zip(self._workers, self.services, strict=True):
                    if task in done:
                        task.result()  # raises what stopped it
                        raise RuntimeError(f"worker for {service!r} stopped before it was ready")
                pending -= done
        finally:
            for w in waiters:
                w.cancel()

    async def stop(self) -> None:
        if self.edge is not None:
            edge, self.edge = self.edge, None
            await edge.stop()
        await self._stop_workers()

    async def _stop_workers(self) -> None:
        workers, self._workers = self._workers, []
        self._stop.set()
        for task in workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> DevServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def run_dev(
    nodes: Sequence[Any],
    *,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
    on_ready: Any = None,
    **options: Any,
) -> None:
    """Serve `nodes` until `stop` is set (or the task is cancelled). `options` are
    `DevServer`'s; `on_ready(server)` is called once it accepts requests."""
    server = await DevServer(nodes, **options).start()
    try:
        if on_ready is not None:
            on_ready(server)
        if ready is not None:
            ready.set()
        await (stop or asyncio.Event()).wait()
    finally:
        await server.stop()
