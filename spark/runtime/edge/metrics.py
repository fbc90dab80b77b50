"""The edge's figures in Prometheus text format, written by hand (no extra dependency).

Series (label values are escaped; method names are capped per service so a client cannot
grow the series without bound):

- `spark_edge_requests_total{service,method,transport,code}` counter: every JSON-RPC
  request and notification; `code` is "ok" or the JSON-RPC error code.
- `spark_edge_errors_total{service,method,transport,code}` counter: the failed ones.
- `spark_edge_request_seconds{service,method}` histogram: time from the edge's read to
  its answer (calls only).
- `spark_edge_inflight_requests{transport}` gauge: calls waiting for an answer.
- `spark_edge_websocket_clients{service}` gauge: open WebSocket connections.
- `spark_edge_http_responses_total{status}` counter, `spark_edge_notifications_total{kind}`
  counter (forwarded / dropped).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

#: Latency buckets in seconds (upper bounds; +Inf is implied).
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
#: Distinct method labels kept per service; the rest are counted as "_other".
MAX_METHODS_PER_SERVICE = 100
#: Distinct service labels kept (any valid name can be POSTed to); the rest are "_other".
MAX_SERVICES = 200
OTHER = "_other"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class Counter:
    kind = "counter"

    def __init__(self, name: str, help: str, labels: tuple[str, ...]):
        self.name, self.help, self.labels = name, help, labels
        self.values: dict[tuple[str, ...], float] = defaultdict(float)

    def inc(self, *labels: str, by: float = 1) -> None:
        self.values[labels] += by

    def get(self, *labels: str) -> float:
        return self.values.get(labels, 0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        for key, value in sorted(self.values.items()):
            lines.append(f"{self.name}{_labels(self.labels, key)} {_num(value)}")
        return lines


class Gauge(Counter):
    kind = "gauge"

    def dec(self, *labels: str, by: float = 1) -> None:
        self.values[labels] -= by

    def set(self, value: float, *labels: str) -> None:
        self.values[labels] = value


class Histogram:
    def __init__(
        self, name: str, help: str, labels: tuple[str, ...], buckets: Iterable[float] = BUCKETS
    ):
        self.name, self.help, self.labels, self.buckets = name, help, labels, tuple(buckets)
        self.counts: dict[tuple[str, ...], list[int]] = {}
        self.sums: dict[tuple[str, ...], float] = defaultdict(float)

    def observe(self, value: float, *labels: str) -> None:
        counts = self.counts.get(labels)
        if counts is None:
            counts = self.counts[labels] = [0] * (len(self.buckets) + 1)
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                counts[i] += 1
                break
        else:
            counts[-1] += 1
        self.sums[labels] += value

    def count(self, *labels: str) -> int:
        return sum(self.counts.get(labels, ()))

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        bounds: tuple[float | str, ...] = (*self.buckets, "+Inf")
        for key in sorted(self.counts):
            running = 0
            for bound, n in zip(bounds, self.counts[key], strict=True):
                running += n
                le = f'le="{bound if isinstance(bound, str) else _num(bound)}"'
                lines.append(f"{self.name}_bucket{_labels(self.labels, key, le)} {running}")
            lines.append(f"{self.name}_sum{_labels(self.labels, key)} {self.sums[key]!r}")
            lines.append(f"{self.name}_count{_labels(self.labels, key)} {running}")
        return lines


class EdgeMetrics:
    def __init__(self) -> None:
        call = ("service", "method", "transport", "code")
        self.requests = Counter(
            "spark_edge_requests_total", "JSON-RPC requests and notifications handled.", call
        )
        self.errors = Counter(
            "spark_edge_errors_total", "JSON-RPC requests answered with an error.", call
        )
        self.latency = Histogram(
            "spark_edge_request_seconds",
            "Seconds from reading a call to its answer.",
            ("service", "method"),
        )
        self.inflight = Gauge(
            "spark_edge_inflight_requests", "Calls waiting for an answer.", ("transport",)
        )
        self.ws_clients = Gauge(
            "spark_edge_websocket_clients", "Open WebSocket connections.", ("service",)
        )
        self.http = Counter(
            "spark_edge_http_responses_total", "HTTP responses by status.", ("status",)
        )
        self.notifications = Counter(
            "spark_edge_notifications_total",
            "Notifications pushed to WebSocket clients.",
            ("kind",),
        )
        self._methods: dict[str, set[str]] = defaultdict(set)

    def service_label(self, service: str) -> str:
        if service in self._methods or len(self._methods) < MAX_SERVICES:
            return service
        return OTHER

    def method_label(self, service: str, method: str) -> str:
        known = self._methods[service]
        if method in known:
            return method
        if len(known) >= MAX_METHODS_PER_SERVICE:
            return OTHER
        known.add(method)
        return method

    def record(
        self, service: str, method: str, transport: str, code: str, seconds: float | None
    ) -> None:
        service = self.service_label(service)
        label = self.method_label(service, method) if method != "-" else method
        self.requests.inc(service, label, transport, code)
        if code != "ok":
            self.errors.inc(service, label, transport, code)
        if seconds is not None:
            self.latency.observe(seconds, service, label)

    def render(self) -> bytes:
        lines: list[str] = []
        for metric in (
            self.requests,
            self.errors,
            self.latency,
            self.inflight,
            self.ws_clients,
            self.http,
            self.notifications,
        ):
            lines.extend(metric.render())
        return ("\n".join(lines) + "\n").encode()
