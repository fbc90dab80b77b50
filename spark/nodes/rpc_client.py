"""`RemoteRpcProxyNode`: a graph node whose work is done by a remote service.

`process()` turns its input into a JSON-RPC call (method from `content["method"]`, else
`metadata["rpc"]["method"]`, else `config.default_method`, else `"process"`; params from
`content["params"]`, else the rest of the content) and returns the remote *result*, so
`result["success"]` works and `proxy1 >> proxy2` chains. A JSON-RPC error raises the
matching `RpcError` subclass; transport failures raise `RpcTimeoutError` or
`RpcConnectionError`.

Retries (`max_retries`, default 0): tenacity, waiting `retry_initial_delay *
retry_backoff_factor ** n` seconds (capped by `retry_max_delay`; the seed's
`retry_backoff_factor=2.0` gives 1 s, 2 s, 4 s). Retried: connection failures, answers whose
code says "try again" (overloaded -32002, unavailable -32003), and timeouts when
`retry_on_timeout`. Never retried: any other JSON-RPC error (the service answered).

Idempotency: every attempt of one call carries the same idempotency key, so a retry never
runs the handler a second time: the worker answers it from the first run (or waits for that
run to finish). A key is made up per call only when `max_retries > 0` (storing a reply per
request costs a Redis write and memory, and only repeats need it); a key the caller gives
(`call(idempotency_key=...)` or `metadata["rpc"]["idempotency_key"]`) is always sent.

Deadlines: one call has one deadline, carried by every attempt's request: `total_timeout`,
by default room for every attempt and wait (`request_timeout * (max_retries + 1)` plus the
waits; just `request_timeout` without retries), never past the deadline of the request
being served when the proxy runs inside a handler (or inside a `TimeoutNode`). Each attempt
waits `request_timeout` at most; an attempt that times out leaves its request running (the
retry, same key, picks its answer up). When the call gives up for good (deadline, no more
retries, or the calling task cancelled), the service is told to cancel what is still
running for it.
"""

from __future__ import annotations

import importlib
import time
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from spark.broker import resolve_url
from spark.broker.connection import is_broker_url
from spark.context import inherited_deadline
from spark.errors import RpcError, RpcTimeoutError, TransportError
from spark.lifetime import close_with_loop
from spark.nodes.base import Node
from spark.nodes.policies import CircuitBreaker, Transition
from spark.nodes.rpc import NOTIFICATION_TOPIC_PREFIX, split_input
from spark.nodes.types import ExecutionContext

TransportName = Literal["http", "websocket", "redis"]
TRANSPORTS: tuple[TransportName, ...] = get_args(TransportName)
#: The endpoint http/websocket proxies use when none is given (upstream's default).
DEFAULT_ENDPOINT = "http://127.0.0.1:8000"
#: The budget a call gets with `request_timeout=None`: no limit of the client's own, so the
#: server's (the edge's default timeout, the handler's deadline) is what ends a call.
UNBOUNDED_BUDGET = 3600.0


@dataclass
class RemoteRpcProxyConfig:
    #: `http(s)://host:port[/service]` for http/websocket (default DEFAULT_ENDPOINT); for
    #: redis, a broker URL or nothing (the broker rule of `spark.broker.resolve_url`).
    endpoint: str | None = None
    transport: TransportName = "http"
    #: Service name (required for transport="redis"; appended to the endpoint for http/ws).
    service: str | None = None
    #: WebSocket URL; default: the endpoint with ws(s):// and `/ws` appended.
    ws_endpoint: str | None = None
    #: Seconds one attempt may take; also bounded by the deadline of the request being served.
    #: None: no client-side limit (UNBOUNDED_BUDGET), the server's own limits apply.
    request_timeout: float | None = 30.0
    #: Seconds to open a connection (the WebSocket handshake, an HTTP connect).
    connect_timeout: float = 10.0
    #: Upstream's switch; the WebSocket is opened on first use either way (and reopened
    #: after a drop), `await proxy.connect()` opens it beforehand.
    auto_connect_websocket: bool = True
    headers: dict[str, str] = field(default_factory=dict)
    default_method: str | None = None
    #: Send calls as notifications (no answer; `process()` returns None).
    notify: bool = False
    verify_ssl: bool = True
    ssl_ca_certs: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    #: Retries after the first attempt (connection failures, overloaded/unavailable answers,
    #: and timeouts when `retry_on_timeout`). Waits: initial * factor**n, capped.
    max_retries: int = 0
    retry_backoff_factor: float = 2.0
    retry_initial_delay: float = 1.0
    retry_max_delay: float = 30.0
    retry_on_timeout: bool = False
    #: Up to this many seconds of random jitter added to each wait (0: none).
    retry_jitter: float = 0.0
    #: Seconds the whole call may take, retries included (None: see the module docstring).
    total_timeout: float | None = None
    #: A breaker around every call (its retries included); events go to the graph's bus.
    circuit_breaker: CircuitBreaker | None = None
    #: Put server notifications on the graph's event bus (upstream's name).
    forward_notifications_to_event_bus: bool = True
    #: Older name of `forward_notifications_to_event_bus`; overrides it when given.
    forward_notifications: bool | None = None
    notification_topic_prefix: str = NOTIFICATION_TOPIC_PREFIX
    notification_topic_key: str = "topic"
    notification_payload_key: str = "payload"
    #: Node fields upstream's config carries: the proxy node's id, name and description.
    id: str | None = None
    name: str | None = None
    description: str | None = None

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {self.transport!r}")
        if self.transport == "redis":
            if not self.service:
                raise ValueError('transport="redis" needs service="name"')
            if self.endpoint and not is_broker_url(self.endpoint):
                raise ValueError(
                    f'transport="redis" talks to the broker, not to {self.endpoint!r}: give a '
                    "broker URL (redis://...) as endpoint, or none ($SPARK_REDIS_URL), or use "
                    'transport="http" to go through that edge'
                )
        elif self.endpoint is None:
            self.endpoint = DEFAULT_ENDPOINT
        if self.forward_notifications is not None:
            self.forward_notifications_to_event_bus = self.forward_notifications
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if self.request_timeout is not None and self.request_timeout <= 0:
            raise ValueError("request_timeout must be > 0 (or None: no client-side limit)")

    @property
    def attempt_timeout(self) -> float:
        """Seconds one attempt waits (`request_timeout`, or UNBOUNDED_BUDGET for None)."""
        return UNBOUNDED_BUDGET if self.request_timeout is None else self.request_timeout

    def retry_waits(self) -> list[float]:
        """The waits between attempts, without jitter (the seed's config: [1.0, 2.0, 4.0])."""
        wait = _wait(self, jitter=False)
        return [wait(_FakeAttempt(n)) for n in range(1, self.max_retries + 1)]

    def call_budget(self, attempt: float | None = None) -> float:
        """Seconds one call may take, every attempt and wait included (`attempt`: a
        per-call override of `request_timeout`, which `total_timeout` does not cap)."""
        if self.total_timeout is not None and attempt is None:
            return self.total_timeout
        per_attempt = self.attempt_timeout if attempt is None else attempt
        if self.max_retries == 0:
            return per_attempt
        return per_attempt * (self.max_retries + 1) + sum(self.retry_waits())


#: A per-call `request_timeout` (`call(timeout=...)`), seen by every attempt of that call.
_timeout_override: ContextVar[float | None] = ContextVar("spark_proxy_timeout", default=None)


class _FakeAttempt:
    """Enough of tenacity's RetryCallState for a wait strategy to compute a wait."""

    def __init__(self, attempt_number: int):
        self.attempt_number = attempt_number


def _wait(config: RemoteRpcProxyConfig, *, jitter: bool = True):
    wait = wait_exponential(
        multiplier=config.retry_initial_delay,
        exp_base=config.retry_backoff_factor,
        max=config.retry_max_delay,
    )
    if jitter and config.retry_jitter > 0:
        wait = wait + wait_random(0, config.retry_jitter)
    return wait


def _maybe_running(exc: BaseException) -> bool:
    """After `exc`, may a request of the call still be running on a worker?"""
    if isinstance(exc, RpcError):
        return isinstance(exc, RpcTimeoutError) or exc.retryable
    return True  # a transport failure, or the calling task cancelled


def _retryable(config: RemoteRpcProxyConfig):
    def check(exc: BaseException) -> bool:
        if isinstance(exc, RpcTimeoutError):
            return config.retry_on_timeout
        if isinstance(exc, TransportError):
            return True
        return isinstance(exc, RpcError) and exc.retryable

    return check


def _make_transport(config: RemoteRpcProxyConfig):
    if config.transport == "redis":
        from spark.client.transport import RedisTransport

        return RedisTransport(resolve_url(config.endpoint), config.service)
    module, name = {
        "http": ("spark.client.http", "HttpTransport"),
        "websocket": ("spark.client.websocket", "WebSocketTransport"),
    }[config.transport]
    transport_cls = getattr(importlib.import_module(module), name)
    return transport_cls(
        config.endpoint,
        service=config.service,
        ws_endpoint=config.ws_endpoint,
        headers=dict(config.headers),
        verify_ssl=config.verify_ssl,
        ssl_ca_certs=config.ssl_ca_certs,
        ssl_certfile=config.ssl_certfile,
        ssl_keyfile=config.ssl_keyfile,
        connect_timeout=config.connect_timeout,
    )


def _state_namespace(graph_state: Any) -> str | None:
    """The namespace of a Redis-backed GraphState, which the remote handler then shares."""
    backend = getattr(graph_state, "backend", None)
    if backend is None or type(backend).__name__ != "RedisBackend":
        return None
    return getattr(backend, "namespace", None)


class RemoteRpcProxyNode(Node):
    def __init__(self, config: RemoteRpcProxyConfig | None = None, **kwargs: Any) -> None:
        config = config or RemoteRpcProxyConfig()
        for field_name in ("id", "name", "description"):
            if kwargs.get(field_name) is None and getattr(config, field_name) is not None:
                kwargs[field_name] = getattr(config, field_name)
        super().__init__(**kwargs)
        self.config = config
        self._transport: Any = None

    @property
    def transport(self) -> Any:
        if self._transport is None:
            close_with_loop(self)
            self._transport = _make_transport(self.config)
            if self.config.forward_notifications_to_event_bus:
                self._transport.on_notification = self._on_notification
        return self._transport

    async def _ensure_transport(self) -> Any:
        """The transport, made if needed (upstream's name, used by its docs' examples)."""
        return self.transport

    async def connect(self) -> None:
        """Open the connection now rather than on the first call (WebSocket transport)."""
        connect = getattr(self.transport, "connect", None)
        if connect is not None:
            await connect()

    # -- calling -----------------------------------------------------------------------

    def _deadline(self, budget: float | None = None) -> float:
        """Now + `budget` (default request_timeout), never past the inherited deadline."""
        deadline = time.time() + (self.config.attempt_timeout if budget is None else budget)
        inherited = inherited_deadline()
        return min(deadline, inherited) if inherited is not None else deadline

    def _retrying(self, deadline: float) -> AsyncRetrying:
        cfg = self.config

        def out_of_time(state: RetryCallState) -> bool:
            # tenacity computes the wait before asking: stop when it would end past the deadline.
            return time.time() + (state.upcoming_sleep or 0.0) >= deadline

        return AsyncRetrying(
            retry=retry_if_exception(_retryable(cfg)),
            wait=_wait(cfg),
            stop=stop_after_attempt(cfg.max_retries + 1) | out_of_time,
            reraise=True,
        )

    async def call(
        self,
        method: str,
        params: Any = None,
        *,
        idempotency_key: str | None = None,
        state: str | None = None,
        notify: bool | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Call the remote method (with the configured retries) and return its result.

        With retries on, every attempt of one call carries the same idempotency key (one
        is made up when the caller gave none), so a retry after a lost answer is answered
        from the first run instead of running the handler again. `timeout` replaces
        `request_timeout` for this call (upstream's `metadata["rpc"]["timeout"]`).
        """
        if timeout is not None:
            if not timeout > 0:
                raise ValueError("timeout must be > 0")
            token = _timeout_override.set(timeout)
            try:
                return await self.call(
                    method, params, idempotency_key=idempotency_key, state=state, notify=notify
                )
            finally:
                _timeout_override.reset(token)
        breaker = self.config.circuit_breaker
        if breaker is None:
            return await self._call(method, params, idempotency_key, state, notify)
        return await breaker.call(
            self._call,
            method,
            params,
            idempotency_key,
            state,
            notify,
            on_transition=self._breaker_transition,
        )

    async def _call(
        self,
        method: str,
        params: Any,
        idempotency_key: str | None,
        state: str | None,
        notify: bool | None,
    ) -> Any:
        cfg = self.config
        as_notification = cfg.notify if notify is None else notify
        deadline = self._deadline(cfg.call_budget(_timeout_override.get()))
        if cfg.max_retries == 0:
            return await self._attempt(
                method, params, idempotency_key, state, as_notification, deadline
            )
        key = idempotency_key or uuid.uuid4().hex
        try:
            async for attempt in self._retrying(deadline):
                with attempt:
                    return await self._attempt(
                        method, params, key, state, as_notification, deadline
                    )
        except BaseException as exc:
            # Given up for good: earlier attempts that timed out may still be running.
            if not as_notification and _maybe_running(exc):
                cancel = getattr(self._transport, "cancel", None)
                if cancel is not None:
                    cancel(key)
            raise
        raise AssertionError("unreachable")  # pragma: no cover - AsyncRetrying reraises

    async def _attempt(
        self,
        method: str,
        params: Any,
        key: str | None,
        state: str | None,
        notify: bool,
        deadline: float,
    ) -> Any:
        if notify:
            await self.transport.notify(method, params, deadline=deadline, state=state)
            return None
        # Wait one request_timeout for this attempt; the request itself may live until the
        # call's deadline, for a retry to collect its answer.
        override = _timeout_override.get()
        wait = self.config.attempt_timeout if override is None else override
        timeout = wait if time.time() + wait < deadline else None
        return await self.transport.call(
            method, params, deadline=deadline, idempotency_key=key, state=state, timeout=timeout
        )

    async def _breaker_transition(self, change: Transition) -> None:
        await self.publish_event(change.topic, {**change.payload(), "proxy": self.name})

    async def call_batch(self, calls: list) -> list:
        """One JSON-RPC batch; returns a `CallOutcome` per call, in order."""
        from spark.client.transport import Call

        items = [c if isinstance(c, Call) else Call(*c) for c in calls]
        return await self.transport.batch(items, deadline=self._deadline())

    async def process(self, context: ExecutionContext) -> Any:
        inputs = context.inputs
        content = inputs.content
        notify = None
        if isinstance(content, dict) and content.get("notify") is True:
            # Upstream's "send this as a notification" flag, not a parameter.
            notify, content = True, {k: v for k, v in content.items() if k != "notify"}
        method, params = split_input(content, inputs.metadata, self.config.default_method)
        rpc_meta = (inputs.metadata or {}).get("rpc")
        rpc_meta = rpc_meta if isinstance(rpc_meta, dict) else {}
        timeout = rpc_meta.get("timeout")
        return await self.call(
            method,
            params,
            idempotency_key=rpc_meta.get("idempotency_key"),
            state=_state_namespace(context.graph_state),
            notify=notify,
            timeout=timeout if isinstance(timeout, int | float) and timeout > 0 else None,
        )

    # -- notifications -----------------------------------------------------------------

    async def _on_notification(self, method: str, params: Any) -> None:
        cfg = self.config
        topic, payload = f"{cfg.notification_topic_prefix}.{method}", params
        if isinstance(params, dict) and cfg.notification_topic_key in params:
            topic = str(params[cfg.notification_topic_key])
            payload = params.get(cfg.notification_payload_key)
        await self.publish_event(topic, payload, {"rpc_method": method})

    # -- lifecycle ---------------------------------------------------------------------

    async def aclose(self) -> None:
        if self._transport is not None:
            transport, self._transport = self._transport, None
            await transport.aclose()

    async def __aenter__(self) -> RemoteRpcProxyNode:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
