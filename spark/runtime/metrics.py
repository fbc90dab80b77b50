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
one process (tests, `spark dev`) without clashing. The edge counts through prometheus-client
with cached label children (a dict lookup and an increment, not `labels()` with its lock);
a worker counts in its CallStats and is read from them when scraped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import orjson
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from spark.runtime.callstats import BUCKETS, CallStats

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
    try:
        doc = orjson.loads(reply)
    except orjson.JSONDecodeError:
        return "error"
    if not isinstance(doc, dict) or "error" not in doc:
        return "ok"  # a result that mentions "error"
    error = doc["error"]
    code = error.get("code") if isinstance(error, dict) else None
    return str(code) if isinstance(code, int) else "error"


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


class WorkerMetrics(Collector):
    """The Prometheus view of one worker: read from its CallStats when scraped.

    Nothing is counted here: the worker counts in place (spark.runtime.callstats) for its
    heartbeats anyway, so exposing metrics costs a request nothing. `serve(port)` answers
    scrapes from a thread of prometheus-client's, so a scrape never waits on the event loop.
    """

    def __init__(
        self,
        service: str,
        stats: CallStats,
        inflight: Callable[[], int],
        backlog: Callable[[], int | None],
    ) -> None:
        self.service = service
        self.stats = stats
        self._inflight = inflight
        self._backlog = backlog
        self.registry = CollectorRegistry()
        self.registry.register(self)
        self._server: Any = None

    def collect(self) -> Iterator[Metric]:
        svc = self.service
        stats = self.stats
        calls = CounterMetricFamily(
            "spark_worker_calls", "Requests answered.", labels=("service", "method", "code")
        )
        seconds = HistogramMetricFamily(
            "spark_worker_handler_seconds",
            "Seconds from the start of a handler to its answer.",
            labels=("service", "method"),
        )
        for method, m in list(stats.methods.items()):
            for code, n in list(m.codes.items()):
                calls.add_metric((svc, method, code), n)
            running, cumulative = 0, []
            for bound, n in zip((*BUCKETS, "+Inf"), list(m.buckets), strict=True):
                running += n
                cumulative.append((str(bound) if bound == "+Inf" else repr(float(bound)), running))
            seconds.add_metric((svc, method), cumulative, m.seconds)
        yield calls
        yield seconds
        for name, help, value in (
            ("spark_worker_reclaimed", "Entries taken over from dead workers.", stats.reclaimed),
            ("spark_worker_retries", "Entries run again (delivered before).", stats.retries),
            (
                "spark_worker_dead_lettered",
                "Entries moved to the dead-letter stream.",
                stats.dead_lettered,
            ),
            ("spark_worker_cancelled", "Requests cancelled by their callers.", stats.cancelled),
        ):
            family = CounterMetricFamily(name, help, labels=("service",))
            family.add_metric((svc,), value)
            yield family
        inflight = GaugeMetricFamily(
            "spark_worker_inflight", "Handlers running now.", labels=("service",)
        )
        inflight.add_metric((svc,), self._inflight())
        yield inflight
        backlog = self._backlog()
        if backlog is not None:
            family = GaugeMetricFamily(
                "spark_worker_backlog",
                "Entries of the request stream not finished (at the last heartbeat).",
                labels=("service",),
            )
            family.add_metric((svc,), backlog)
            yield family

    def render(self) -> bytes:
        return render(self.registry)

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Listen for scrapes on `host:port` (0 picks a free port); returns the port."""
        self._server, _thread = start_http_server(port, host, registry=self.registry)
        return self._server.server_port

    def close(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.shutdown()
            server.server_close()
