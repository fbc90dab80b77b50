"""The edge's figures, in Prometheus text format through prometheus-client.

Series (method names are capped per service, and service names per edge, so a client
cannot grow the series without bound):

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

from prometheus_client import CollectorRegistry

from spark.runtime.metrics import OTHER, MethodLabels, counter, gauge, histogram, render

#: Distinct service labels kept (any valid name can be POSTed to); the rest are "_other".
MAX_SERVICES = 200


class EdgeMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        call = ("service", "method", "transport", "code")
        self.requests = counter(
            r, "spark_edge_requests_total", "JSON-RPC requests and notifications handled.", call
        )
        self.errors = counter(
            r, "spark_edge_errors_total", "JSON-RPC requests answered with an error.", call
        )
        self.latency = histogram(
            r,
            "spark_edge_request_seconds",
            "Seconds from reading a call to its answer.",
            ("service", "method"),
        )
        self.inflight = gauge(
            r, "spark_edge_inflight_requests", "Calls waiting for an answer.", ("transport",)
        )
        self.ws_clients = gauge(
            r, "spark_edge_websocket_clients", "Open WebSocket connections.", ("service",)
        )
        self.http = counter(
            r, "spark_edge_http_responses_total", "HTTP responses by status.", ("status",)
        )
        self.notifications = counter(
            r,
            "spark_edge_notifications_total",
            "Notifications pushed to WebSocket clients.",
            ("kind",),
        )
        self._services: set[str] = set()
        self.method_label = MethodLabels()

    def service_label(self, service: str) -> str:
        if service in self._services:
            return service
        if len(self._services) < MAX_SERVICES:
            self._services.add(service)
            return service
        return OTHER

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
        return render(self.registry)
