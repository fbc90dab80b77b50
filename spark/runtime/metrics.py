"""Prometheus metrics of a worker process, with prometheus-client, and the pieces the edge shares.

Series of a worker (`spark-worker --metrics-port`; every series has a `service` label):

- `spark_worker_calls_total{service,method,code}` counter: requests answered; `code` is
  "ok" or the JSON-RPC error code (the same label as the edge's `spark_edge_requests_total`).
- `spark_worker_handler_seconds{service,method}` histogram: time from the start of the
  handler to its answer.
- `spark_worker_inflight{service}` gauge: handlers running now (read when scraped).
- `spark_worker_reclaimed_total{service}` counter: entries taken over from dead workers.
- `spark_worker_retries_total{service}` counter: entries run again (delivered before).
- `spark_worker_dead_lettered_total{service}` counter.
- `spark_worker_cancelled_total{service}` counter: requests cancelled by their callers.
- `spark_worker_backlog{service}` gauge: entries on the request stream not yet finished,
  as of the last heartbeat.

Each worker (and each edge) has its own `CollectorRegistry`, so several of them can live in
one process (tests, `spark dev`) without clashing. Label children are cached: counting a
call costs a dict lookup and an increment, not `labels()` with its lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)

#: Latency buckets in seconds (+Inf is implied), shared by the edge and the workers.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: Distinct method labels kept per service; the rest are counted as "_other".
MAX_METHODS_PER_SERVICE = 100
OTHER = "_other"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_ERROR_MARK = b'"error":'

# `_created` timestamps double every counter's series and nobody here reads them.
disable_created_metrics()


def code_of(reply: bytes | None) -> str:
    """ "ok", or the JSON-RPC error code of an encoded reply (only error replies are parsed)."""
    if reply is None or _ERROR_MARK not in reply:
        return "ok"
    import orjson

    try:
        return str(orjson.loads(reply)["error"]["code"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "error"


class MethodLabels:
    """Method label values, at most MAX_METHODS_PER_SERVICE per service (junk names are
    counted as "_other" so a caller cannot grow the series without bound)."""

    def __init__(self, limit: int = MAX_METHODS_PER_SERVICE) -> None:
        self.limit = limit
        self._known: dict[str, set[str]] = {}

    def __call__(self, service: str, method: str) -> str:
        known = self._known.get(service)
        if known is None:
            known = self._known[service] = set()
        if method in known:
            return method
        if len(known) >= self.limit:
            return OTHER
        known.add(method)
        return method


class Family:
    """A metric family whose label children are cached (`inc`, `get` by label values)."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def child(self, *labels: str) -> Any:
        c = self._children.get(labels)
        if c is None:
            c = self._children[labels] = self.metric.labels(*labels)
        return c

    def inc(self, *labels: str, by: float = 1) -> None:
        self.child(*labels).inc(by)

    def dec(self, *labels: str, by: float = 1) -> None:
        self.child(*labels).dec(by)

    def set(self, value: float, *labels: str) -> None:
        self.child(*labels).set(value)

    def observe(self, value: float, *labels: str) -> None:
        self.child(*labels).observe(value)

    def get(self, *labels: str) -> float:
        """The current value (counters and gauges), 0 for labels never seen."""
        c = self._children.get(labels)
        return 0 if c is None else c._value.get()

    def count(self, *labels: str) -> int:
        """Observations of a histogram."""
        c = self._children.get(labels)
        if c is None:
            return 0
        return int(sum(b.get() for b in c._buckets))


def counter(registry: CollectorRegistry, name: str, help: str, labels: tuple[str, ...]) -> Family:
    # prometheus-client appends `_total` itself.
    return Family(Counter(name.removesuffix("_total"), help, labels, registry=registry))


def gauge(registry: CollectorRegistry, name: str, help: str, labels: tuple[str, ...]) -> Family:
    return Family(Gauge(name, help, labels, registry=registry))


def histogram(registry: CollectorRegistry, name: str, help: str, labels: tuple[str, ...]) -> Family:
    return Family(Histogram(name, help, labels, registry=registry, buckets=BUCKETS))


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


class WorkerMetrics:
    """What one worker counts; `serve(port)` exposes it over HTTP (a thread of
    prometheus-client's, so a scrape never waits on the event loop)."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry()
        r, s = self.registry, ("service",)
        self.calls = counter(
            r, "spark_worker_calls_total", "Requests answered.", ("service", "method", "code")
        )
        self.seconds = histogram(
            r,
            "spark_worker_handler_seconds",
            "Seconds from the start of a handler to its answer.",
            ("service", "method"),
        )
        self._inflight = Gauge(
            "spark_worker_inflight", "Handlers running now.", s, registry=r
        ).labels(service)
        self.reclaimed = counter(
            r, "spark_worker_reclaimed_total", "Entries taken over from dead workers.", s
        )
        self.retries = counter(
            r, "spark_worker_retries_total", "Entries run again (delivered before).", s
        )
        self.dead_lettered = counter(
            r, "spark_worker_dead_lettered_total", "Entries moved to the dead-letter stream.", s
        )
        self.cancelled = counter(
            r, "spark_worker_cancelled_total", "Requests cancelled by their callers.", s
        )
        self.backlog = gauge(
            r, "spark_worker_backlog", "Entries of the request stream not finished.", s
        )
        self._methods = MethodLabels()
        #: (method, code) -> (calls child, seconds child): one lookup per answered request.
        self._per_call: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def track_inflight(self, read: Callable[[], float]) -> None:
        """The in-flight gauge reads `read()` at scrape time (nothing to count per call)."""
        self._inflight.set_function(read)

    def call(self, method: str, code: str, seconds: float) -> None:
        pair = self._per_call.get((method, code))
        if pair is None:
            label = self._methods(self.service, method)
            pair = (
                self.calls.child(self.service, label, code),
                self.seconds.child(self.service, label),
            )
            if len(self._per_call) < 4 * MAX_METHODS_PER_SERVICE:
                self._per_call[(method, code)] = pair
        pair[0].inc()
        pair[1].observe(seconds)

    def render(self) -> bytes:
        return render(self.registry)

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Listen for scrapes on `host:port` (0 picks a free port); returns the port."""
        self._server, self._thread = start_http_server(port, host, registry=self.registry)
        return self._server.server_port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
