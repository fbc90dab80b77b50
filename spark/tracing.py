"""W3C trace context through every hop, with OpenTelemetry when it is installed.

With `opentelemetry-api` importable (the `spark-rpc[otel]` extra), a call carries the
caller's current context (`traceparent`, `tracestate`) in its envelope, HTTP headers or
WebSocket message; the edge and the worker continue it, each with its own span, so client,
edge and worker spans form one trace and calls made inside a handler continue it. Without
the package (or with `SPARK_TRACING=off`) nothing is imported and every function here is a
constant-time no-op: `ENABLED` is False and callers skip the work entirely.

Spans follow the OpenTelemetry RPC semantic conventions: `rpc.system="jsonrpc"`,
`rpc.service`, `rpc.method`, `rpc.jsonrpc.request_id`, and `rpc.jsonrpc.error_code` (with
status ERROR) when the answer is an error. Spans are recorded only when the application
configured an SDK `TracerProvider`; with the API alone the context still propagates.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from spark.protocol.wire import TRACEPARENT, TRACESTATE, read_trace

ENABLED = False
if os.environ.get("SPARK_TRACING", "").lower() not in ("off", "0", "false", "no"):
    try:
        from opentelemetry import context as _context
        from opentelemetry import propagate as _propagate
        from opentelemetry import trace as _trace
        from opentelemetry.trace import NoOpTracerProvider as _NoOpTracerProvider
        from opentelemetry.trace import ProxyTracerProvider as _ProxyTracerProvider
        from opentelemetry.trace import SpanKind as _SpanKind
        from opentelemetry.trace import Status as _Status
        from opentelemetry.trace import StatusCode as _StatusCode
    except ImportError:
        pass
    else:
        ENABLED = True

_TRACER: Any = None


def _tracer() -> Any:
    global _TRACER
    if _TRACER is None:
        # A ProxyTracer until the application sets a provider; it follows that provider.
        _TRACER = _trace.get_tracer("spark-rpc")
    return _TRACER


_RECORDING = False
_LOOKED_UP = False
_UNKNOWN = object()


def _recording() -> bool:
    """Whether an SDK (a real TracerProvider) is installed. Without one no span is ever
    recorded, so only the context is carried: no span objects are made at all.

    Asked for every request an edge or a worker serves, so answered without
    `get_tracer_provider()` (an environment lookup each time) when it can be: OpenTelemetry
    sets its global provider once (a second `set_tracer_provider` is ignored), so a provider
    that records stays; and after a first lookup (which loads a provider named by
    OTEL_PYTHON_TRACER_PROVIDER), an empty global slot means the proxy: nothing records.
    """
    global _RECORDING, _LOOKED_UP
    if _RECORDING:
        return True
    if _LOOKED_UP and getattr(_trace, "_TRACER_PROVIDER", _UNKNOWN) is None:
        return False
    _LOOKED_UP = True
    provider = _trace.get_tracer_provider()
    _RECORDING = not isinstance(provider, (_ProxyTracerProvider, _NoOpTracerProvider))
    return _RECORDING


def inject() -> dict[str, str] | None:
    """The current context as a W3C carrier, or None (no package, or no context to send)."""
    if not ENABLED or not _trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _propagate.inject(carrier)
    return carrier or None


def carrier_of(headers: Mapping[str, str]) -> dict[str, str] | None:
    """`traceparent` (and `tracestate`) of HTTP headers, or None when there is none."""
    parent = headers.get(TRACEPARENT)
    if not parent:
        return None
    carrier = {TRACEPARENT: parent}
    state = headers.get(TRACESTATE)
    if state:
        carrier[TRACESTATE] = state
    return carrier


class Span:
    """What a spark span lets its user do: record the answer's code."""

    __slots__ = ("_span",)

    def __init__(self, span: Any) -> None:
        self._span = span

    def answered(self, code: str) -> None:
        """`code` is "ok" or a JSON-RPC error code (as in the metrics)."""
        if code != "ok" and self._span is not None and self._span.is_recording():
            try:
                self._span.set_attribute("rpc.jsonrpc.error_code", int(code))
            except ValueError:
                pass
            self._span.set_status(_Status(_StatusCode.ERROR))


_NO_SPAN = Span(None)


def _attributes(service: str, method: str, request_id: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {"rpc.system": "jsonrpc", "rpc.service": service, "rpc.method": method}
    if request_id is not None:
        attrs["rpc.jsonrpc.request_id"] = str(request_id)
    return attrs


@contextmanager
def server_span(
    carrier: Mapping[str, str] | None,
    service: str,
    method: str,
    request_id: Any = None,
    *,
    name: str | None = None,
) -> Iterator[Span]:
    """A SERVER span for serving `service.method`, child of the context in `carrier`.

    It is the current span inside the block, so calls made there continue the trace.
    Without an SDK only the caller's context is made current (nothing would be recorded).
    """
    if not ENABLED:
        yield _NO_SPAN
        return
    parent = _extract(carrier)
    if not _recording():
        token = _context.attach(parent) if parent is not None else None
        try:
            yield _NO_SPAN
        finally:
            if token is not None:
                _context.detach(token)
        return
    span = _tracer().start_span(
        name or f"{service}/{method}",
        context=parent,
        kind=_SpanKind.SERVER,
        attributes=_attributes(service, method, request_id),
        record_exception=False,
    )
    token = _context.attach(_trace.set_span_in_context(span, parent))
    try:
        yield Span(span)
    except BaseException as exc:
        if span.is_recording() and not isinstance(exc, GeneratorExit):
            span.set_status(_Status(_StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        _context.detach(token)
        span.end()


def _extract(carrier: Mapping[str, str] | None) -> Any:
    """The context in a carrier from outside; None for none or junk (a foreign producer's
    odd envelope costs its trace, never the request)."""
    carrier = read_trace(carrier)
    if carrier is None:
        return None
    try:
        return _propagate.extract(carrier)
    except Exception:
        return None


def wanted(carrier: Mapping[str, str] | None) -> bool:
    """Whether `server_span(carrier, ...)` would do anything (skip it when not)."""
    return ENABLED and (carrier is not None or _recording())


@contextmanager
def client_span(service: str, method: str, request_id: Any = None) -> Iterator[Span]:
    """A CLIENT span around one call; `inject()` inside it carries this span's context."""
    if not ENABLED or not _recording():
        yield _NO_SPAN
        return
    with _tracer().start_as_current_span(
        f"{service}/{method}",
        kind=_SpanKind.CLIENT,
        attributes=_attributes(service, method, request_id),
        record_exception=False,
    ) as span:
        yield Span(span)


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the current span, or None (for logs and handlers)."""
    if not ENABLED:
        return None
    ctx = _trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")


def start_client(service: str, method: str, request_id: Any = None) -> tuple[Any, Any]:
    """(span, carrier) of a CLIENT span that is not made current (for code that cannot
    wrap the call in a `with` block); end it with `end_client`. Without an SDK: (None, the
    current context), as nothing would be recorded."""
    if not _recording():
        return None, inject()
    span = _tracer().start_span(
        f"{service}/{method}",
        kind=_SpanKind.CLIENT,
        attributes=_attributes(service, method, request_id),
        record_exception=False,
    )
    carrier: dict[str, str] = {}
    _propagate.inject(carrier, context=_trace.set_span_in_context(span))
    return span, carrier or None


def end_client(span: Any, exc: BaseException | None) -> None:
    """End a span of `start_client`; `exc` is what the call raised, if anything."""
    if exc is not None:
        code = getattr(exc, "code", None)
        Span(span).answered(str(code) if isinstance(code, int) else "-32603")
    span.end()


def traced_call(func: Any) -> Any:
    """Decorates a transport's `call(self, method, ...)` with a CLIENT span (the service is
    `self.service`). Without tracing it returns `func` itself: no cost at all."""
    if not ENABLED:
        return func

    @functools.wraps(func)
    async def call(self: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        with client_span(getattr(self, "service", None) or "-", method) as span:
            try:
                return await func(self, method, *args, **kwargs)
            except BaseException as exc:
                code = getattr(exc, "code", None)
                span.answered(str(code) if isinstance(code, int) else "-32603")
                raise

    return call
