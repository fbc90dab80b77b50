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
one process (tests, `spark dev`) without clashing. The edge counts in plain dicts (`Family`:
a dict lookup and an addition, no lock) and a worker in its CallStats; prometheus-client
reads both when scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

import orjson
from prometheus_client import (
    CollectorRegistry,
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
from prometheus_client.utils import floatToGoString

from spark.runtime.callstats import BUCKETS, CallStats

#: Distinct method labels kept per service; the rest are counted as "_other".
MAX_METHODS_PER_SERVICE = 100
OTHER = "_other"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_ERROR_MARK = b'"error":'

#: Histogram bucket bounds as exposed: BUCKETS, then "+Inf".
_BOUNDS: tuple[float | str, ...] = (*BUCKETS, "+Inf")

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


class Family(Collector):
    """A metric family counted in plain Python, read by prometheus-client when scraped.

    An edge counts on its event loop, several times a request, and is scraped there too
    (`/metrics`): prometheus-client's children take a lock per increment, which cost the
    edge ~2 µs a request for no concurrency it has. Renders exactly as prometheus-client's
    own Counter, Gauge and Histogram do.
    """

    def __init__(
        self, registry: CollectorRegistry, kind: str, name: str, help: str, labels: tuple[str, ...]
    ) -> None:
        self.kind, self.name, self.help, self.labels = kind, name, help, labels
        #: Label values -> value (counters and gauges).
        self._values: dict[tuple[str, ...], float] = {}
        #: Label values -> [count per bucket (BUCKETS, then +Inf), sum] (histograms).
        self._observed: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}
        registry.register(self)

    def inc(self, *labels: str, by: float = 1) -> None:
        values = self._values
        values[labels] = values.get(labels, 0.0) + by

    def dec(self, *labels: str, by: float = 1) -> None:
        values = self._values
        values[labels] = values.get(labels, 0.0) - by

    def set(self, value: float, *labels: str) -> None:
        self._values[labels] = float(value)

    def observe(self, value: float, *labels: str) -> None:
        observed = self._observed.get(labels)
        if observed is None:
            observed = self._observed[labels] = ([0] * (len(BUCKETS) + 1), [0.0])
        observed[0][bisect_left(BUCKETS, value)] += 1  # first bound >= value: `le`
        observed[1][0] += value

    def get(self, *labels: str) -> float:
        """The current value (counters and gauges), 0 for labels never seen."""
        return self._values.get(labels, 0)

    def count(self, *labels: str) -> int:
        """Observations of a histogram."""
        observed = self._observed.get(labels)
        return 0 if observed is None else sum(observed[0])

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        if isinstance(family, HistogramMetricFamily):
            for key, (counts, total) in list(self._observed.items()):
                running, cumulative = 0, []
                for bound, n in zip(_LE, counts, strict=True):
                    running += n
                    cumulative.append((bound, running))
                family.add_metric(key, cumulative, total[0])
        else:
            for key, value in list(self._values.items()):
                family.add_metric(key, value)
        yield family

    def _family(self) -> CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily:
        if self.kind == "counter":
            # prometheus-client appends `_total` itself.
            return CounterMetricFamily(
                self.name.removesuffix("_total"), self.help, labels=self.labels
            )
        if self.kind == "gauge":
            return GaugeMetricFamily(self.name, self.help, labels=self.labels)
        return HistogramMetricFamily(self.name, self.help, labels=self.labels)


#: The `le` label of each histogram bucket, as prometheus-client writes it.
_LE = (*(floatToGoString(b) for b in BUCKETS), "+Inf")


def counter(registry: CollectorRegistry, name: str, help: str, labels: tuple[str, ...]) -> Family:
    return Family(registry, "counter", name, help, labels)


def gauge(registry: CollectorRegistry, name: str, help: str, labels: tuple[str, ...]) -> Family:
    return Family(registry, "gauge", name, help, labels)


def histogram(registry: CollectorRegistry, name: str, help: str, labels: tuple[str, ...]) -> Family:
    return Family(registry, "histogram", name, help, labels)


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
            for bound, n in zip(_BOUNDS, list(m.buckets), strict=True):
                running += n
                cumulative.append(
                    (bound if isinstance(bound, str) else repr(float(bound)), running)
                )
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
            stream = GaugeMetricFamily(
                "spark_worker_backlog",
                "Entries of the request stream not finished (at the last heartbeat).",
                labels=("service",),
            )
            stream.add_metric((svc,), backlog)
            yield stream

    def render(self) -> bytes:
        return render(self.registry)

    def serve(self, port: int, host: str = "0.0.0.0") -> int:
        """Listen for scrapes on `host:port` (0 picks a free port); returns the port."""
        self._server, _thread = start_http_server(port, host, registry=self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.shutdown()
            server.server_close()
