"""`GET /dashboard`: a live view of every service, served by the edge.

The page (plain HTML, CSS and JavaScript from package data: no build step, no CDN) opens a
Server-Sent Events stream at `/dashboard/events` and redraws on every message. The edge
samples the broker once a `SAMPLE_INTERVAL` while anyone is watching: per service its live
workers, backlog, pending and dead letters (from `admin.service_status`), calls served,
calls/s and p50/p99 latency (from the workers' heartbeats, spark.runtime.callstats), its
methods (from `rpc.discover`, refreshed every `DISCOVER_EVERY` seconds) and its first dead
letters. Calls/s and latencies are kept for the last `WINDOW` seconds, for the chart.

Routes follow the rules of `/metrics`: when the edge has tokens (and `protect_metrics`),
every route needs one, as `Authorization: Bearer` or, since `EventSource` and a browser's
address bar cannot set headers, `?token=`. Replay and purge
(`POST /dashboard/dlq/{service}/replay|purge`, JSON `{"ids": [...]}` or `{"all": true}`)
change data: with tokens configured they need one even when `/metrics` is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from spark.broker import UNREACHABLE, admin, registry
from spark.errors import RpcError, TransportError
from spark.runtime import callstats
from spark.runtime.edge.core import Edge, valid_service
from spark.runtime.overview import service_overview

log = logging.getLogger("spark.edge.dashboard")

#: Seconds between two samples of the broker while someone watches.
SAMPLE_INTERVAL = 1.0
#: Seconds of history kept for the chart.
WINDOW = 300.0
#: Samples each chart point's rate and latencies span (smooths a 1 s sampling).
SMOOTHING = 5
#: Seconds an `rpc.discover` answer is reused.
DISCOVER_EVERY = 60.0
#: Dead letters listed per service.
DEAD_LETTERS_SHOWN = 20
#: Seconds the sampler keeps running after the last watcher left.
LINGER = 30.0
STATIC = {
    "dashboard.js": "application/javascript",
    "dashboard.css": "text/css",
}


def _static(name: str) -> bytes:
    return resources.files("spark.runtime.edge").joinpath("static", name).read_bytes()


class Dashboard:
    def __init__(self, edge: Edge, interval: float = SAMPLE_INTERVAL) -> None:
        self.edge = edge
        self.interval = interval
        self.state: dict[str, Any] | None = None
        self._history: dict[str, deque[tuple[float, dict[str, Any]]]] = {}
        self._docs: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._watchers: set[asyncio.Queue] = set()
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._last_watched = 0.0
        self._closed = False

    # -- sampling ------------------------------------------------------------------------

    def _ensure_sampling(self) -> None:
        self._last_watched = time.monotonic()
        if not self._closed and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._run(), name="spark-dashboard")

    async def _run(self) -> None:
        while not self._closed:
            try:
                self.state = await self.sample()
            except (TimeoutError, *UNREACHABLE) as exc:
                self.state = {"at": time.time(), "error": f"broker unreachable: {exc}"}
            except Exception:
                log.exception("dashboard sample failed")
                self.state = {"at": time.time(), "error": "sample failed (see the edge's log)"}
            for queue in list(self._watchers):
                _offer(queue, self.state)
            if not self._watchers and time.monotonic() - self._last_watched > LINGER:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)

    async def sample(self) -> dict[str, Any]:
        redis = self.edge.redis
        assert redis is not None
        now = time.time()
        async with asyncio.timeout(5.0):
            names = await registry.services(redis)
            services = []
            for name in names:
                status = await admin.service_status(redis, name)
                overview = service_overview(status, now)
                methods = callstats.merge(
                    info.get("methods") or {} for info in status.worker_info.values()
                )
                overview["series"] = self._series(name, now, methods)
                overview["dead_letters"] = [
                    _letter(x)
                    for x in await admin.dead_letters(redis, name, count=DEAD_LETTERS_SHOWN)
                ]
                overview["api"] = await self._discover(name, status.workers)
                services.append(overview)
        for gone in set(self._history) - set(names):
            del self._history[gone]
        return {"at": now, "interval": self.interval, "window": WINDOW, "services": services}

    def _series(self, service: str, now: float, methods: dict[str, Any]) -> list[dict[str, Any]]:
        history = self._history.get(service)
        if history is None:
            history = self._history[service] = deque(maxlen=int(WINDOW / self.interval) + 1)
        history.append((now, callstats.totals(methods)))
        points = list(history)
        series = []
        for i in range(1, len(points)):
            t0, old = points[max(i - SMOOTHING, 0)]
            t1, new = points[i]
            if t1 <= t0:
                continue
            delta = callstats.diff({"_": new}, {"_": old})["_"]
            p50 = callstats.quantile(delta["buckets"], 0.5)
            p99 = callstats.quantile(delta["buckets"], 0.99)
            series.append(
                {
                    "t": round(t1, 3),
                    "rate": round(delta["calls"] / (t1 - t0), 3),
                    "p50_ms": None if p50 is None else round(p50 * 1000, 3),
                    "p99_ms": None if p99 is None else round(p99 * 1000, 3),
                }
            )
        return series

    async def _discover(self, service: str, workers: int) -> dict[str, Any] | None:
        cached = self._docs.get(service)
        if cached is not None and time.monotonic() - cached[0] < DISCOVER_EVERY:
            return cached[1]
        if not workers or self.edge.client is None:
            return cached[1] if cached else None
        try:
            doc = await self.edge.client.call(service, "rpc.discover", timeout=2.0)
        except (RpcError, TransportError, *UNREACHABLE) as exc:
            log.debug("rpc.discover of %s failed: %s", service, exc)
            doc = cached[1] if cached else None
        if len(self._docs) > 1000:
            self._docs.clear()
        self._docs[service] = (time.monotonic(), doc if isinstance(doc, dict) else None)
        return self._docs[service][1]

    # -- watchers --------------------------------------------------------------------------

    def watch(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(maxsize=1)
        self._watchers.add(queue)
        self._ensure_sampling()
        if self.state is not None:
            _offer(queue, self.state)
        return queue

    def unwatch(self, queue: asyncio.Queue) -> None:
        self._watchers.discard(queue)
        self._last_watched = time.monotonic()

    async def current(self) -> dict[str, Any]:
        self._ensure_sampling()
        if self.state is None:
            self.state = await self.sample()
        return self.state

    def refresh(self) -> None:
        """Sample now (after a replay or purge) rather than at the next tick."""
        self._wake.set()

    async def close(self) -> None:
        self._closed = True
        for queue in list(self._watchers):
            _offer(queue, None)  # ends the event streams
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _offer(queue: asyncio.Queue, item: Any) -> None:
    """Latest wins: a watcher that has not read the previous state gets this one instead."""
    if queue.full():
        with contextlib.suppress(asyncio.QueueEmpty):
            queue.get_nowait()
    queue.put_nowait(item)


def _letter(letter: admin.DeadLetter) -> dict[str, Any]:
    return {
        "id": letter.id,
        "method": letter.method,
        "request_id": letter.envelope.id if letter.envelope else None,
        "error": letter.error,
        "deliveries": letter.deliveries,
        "at": letter.at,
        "replayable": letter.envelope is not None,
    }


# -- routes ------------------------------------------------------------------------------------

DASHBOARD_KEY = web.AppKey("spark_dashboard", Dashboard)


def _edge(request: web.Request) -> Edge:
    return request.app[DASHBOARD_KEY].edge


def _reading_allowed(request: web.Request) -> bool:
    edge = _edge(request)
    return not edge.config.protect_metrics or edge.tokens.allows(request, query=True)


def _unauthorized() -> web.Response:
    return web.json_response(
        {"error": "missing or invalid token"},
        status=401,
        headers={"WWW-Authenticate": "Bearer"},
    )


async def handle_page(request: web.Request) -> web.StreamResponse:
    if not _reading_allowed(request):
        return _unauthorized()
    return web.Response(body=_static("dashboard.html"), content_type="text/html", charset="utf-8")


async def handle_static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in STATIC:
        raise web.HTTPNotFound()
    # Static code and style hold no data: served without a token, like any page asset.
    return web.Response(
        body=_static(name),
        content_type=STATIC[name],
        charset="utf-8",
        headers={"Cache-Control": "no-cache"},
    )


async def handle_state(request: web.Request) -> web.StreamResponse:
    if not _reading_allowed(request):
        return _unauthorized()
    state = await request.app[DASHBOARD_KEY].current()
    return web.Response(body=orjson.dumps(state), content_type="application/json")


async def handle_events(request: web.Request) -> web.StreamResponse:
    if not _reading_allowed(request):
        return _unauthorized()
    dashboard = request.app[DASHBOARD_KEY]
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    queue = dashboard.watch()
    try:
        while True:
            state = await queue.get()
            if state is None:
                break
            await response.write(b"data: " + orjson.dumps(state) + b"\n\n")
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        dashboard.unwatch(queue)
    return response


async def _dlq_request(request: web.Request) -> tuple[str, list[str] | None] | web.Response:
    edge = _edge(request)
    if not edge.tokens.allows(request):
        return _unauthorized()
    service = request.match_info["service"]
    if not valid_service(service):
        return web.json_response({"error": "invalid service name"}, status=404)
    try:
        body = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError:
        return web.json_response({"error": "body is not JSON"}, status=400)
    ids = body.get("ids") if isinstance(body, dict) else None
    if isinstance(body, dict) and body.get("all") is True and ids is None:
        return service, None
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        return web.json_response({"error": 'give {"ids": [...]} or {"all": true}'}, status=400)
    return service, ids


async def handle_replay(request: web.Request) -> web.StreamResponse:
    asked = await _dlq_request(request)
    if isinstance(asked, web.Response):
        return asked
    service, ids = asked
    edge = _edge(request)
    replayer = admin.Replayer(edge.redis, service, max_backlog=edge.config.max_backlog)
    report = await (replayer.replay_all() if ids is None else replayer.replay_ids(ids))
    log.info("dashboard: replayed %d dead letter(s) of %s", len(report.replayed), service)
    request.app[DASHBOARD_KEY].refresh()
    return web.Response(body=orjson.dumps(report.to_dict()), content_type="application/json")


async def handle_purge(request: web.Request) -> web.StreamResponse:
    asked = await _dlq_request(request)
    if isinstance(asked, web.Response):
        return asked
    service, ids = asked
    deleted = await admin.purge(_edge(request).redis, service, ids)
    log.info("dashboard: purged %d dead letter(s) of %s", deleted, service)
    request.app[DASHBOARD_KEY].refresh()
    return web.json_response({"deleted": deleted})


def setup(app: web.Application, edge: Edge) -> None:
    """Add the dashboard's routes (before the catch-all service routes) and its lifecycle."""
    dashboard = Dashboard(edge)
    app[DASHBOARD_KEY] = dashboard

    async def on_shutdown(app: web.Application) -> None:
        await dashboard.close()

    app.on_shutdown.append(on_shutdown)
    app.router.add_get("/dashboard", handle_page)
    app.router.add_get("/dashboard/static/{name}", handle_static)
    app.router.add_get("/dashboard/state", handle_state)
    app.router.add_get("/dashboard/events", handle_events)
    app.router.add_post("/dashboard/dlq/{service}/replay", handle_replay)
    app.router.add_post("/dashboard/dlq/{service}/purge", handle_purge)
