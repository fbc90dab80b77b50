"""`RemoteRpcProxyNode`: a graph node whose work is done by a remote service.

`process()` turns its input into a JSON-RPC call (method from `content["method"]`, else
`metadata["rpc"]["method"]`, else `config.default_method`, else `"process"`; params from
`content["params"]`, else the rest of the content) and returns the remote *result*, so
`result["success"]` works and `proxy1 >> proxy2` chains. A JSON-RPC error raises the
matching `RpcError` subclass; transport failures raise `RpcTimeoutError` or
`RpcConnectionError`.
"""

from __future__ import annotations

import importlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from spark.broker import resolve_url
from spark.context import inherited_deadline
from spark.errors import RpcError, RpcTimeoutError, TransportError
from spark.nodes.base import Node
from spark.nodes.rpc import NOTIFICATION_TOPIC_PREFIX, split_input
from spark.nodes.types import ExecutionContext

TRANSPORTS = ("http", "websocket", "redis")
_BROKER_SCHEMES = ("redis://", "rediss://", "unix://", "memory://", "memory:")


@dataclass
class RemoteRpcProxyConfig:
    #: `http(s)://host:port[/service]` for http/websocket; the broker URL for redis.
    endpoint: str = "http://localhost:8000"
    transport: str = "http"
    #: Service name (required for transport="redis"; appended to the endpoint for http/ws).
    service: str | None = None
    #: WebSocket URL; default: the endpoint with ws(s):// and `/ws` appended.
    ws_endpoint: str | None = None
    #: Seconds one attempt may take; also bounded by the deadline of the request being served.
    request_timeout: float = 30.0
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
    #: Put server notifications on the graph's event bus.
    forward_notifications: bool = True
    notification_topic_prefix: str = NOTIFICATION_TOPIC_PREFIX
    notification_topic_key: str = "topic"
    notification_payload_key: str = "payload"

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {TRANSPORTS}, got {self.transport!r}")
        if self.transport == "redis" and not self.service:
            raise ValueError('transport="redis" needs service="name"')
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")


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

        url = config.endpoint if config.endpoint.startswith(_BROKER_SCHEMES) else None
        return RedisTransport(resolve_url(url), config.service)
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
    )


def _state_namespace(graph_state: Any) -> str | None:
    """The namespace of a Redis-backed GraphState, which the remote handler then shares."""
    backend = getattr(graph_state, "backend", None)
    if backend is None or type(backend).__name__ != "RedisBackend":
        return None
    return getattr(backend, "namespace", None)


class RemoteRpcProxyNode(Node):
    def __init__(self, config: RemoteRpcProxyConfig | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.config = config or RemoteRpcProxyConfig()
        self._transport: Any = None

    @property
    def transport(self):
        if self._transport is None:
            self._transport = _make_transport(self.config)
            if self.config.forward_notifications:
                self._transport.on_notification = self._on_notification
        return self._transport

    # -- calling -----------------------------------------------------------------------

    def _deadline(self) -> float:
        deadline = time.time() + self.config.request_timeout
        inherited = inherited_deadline()
        return min(deadline, inherited) if inherited is not None else deadline

    def _retrying(self) -> AsyncRetrying:
        cfg = self.config
        inherited = inherited_deadline()

        def out_of_time(state) -> bool:
            return inherited is not None and time.time() >= inherited

        return AsyncRetrying(
            retry=retry_if_exception(_retryable(cfg)),
            wait=wait_exponential(
                multiplier=cfg.retry_initial_delay,
                exp_base=cfg.retry_backoff_factor,
                max=cfg.retry_max_delay,
            ),
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
    ) -> Any:
        """Call the remote method (with the configured retries) and return its result.

        With retries on, every attempt of one call carries the same idempotency key (one
        is made up when the caller gave none), so a retry after a lost answer is answered
        from the first run instead of running the handler again.
        """
        as_notification = self.config.notify if notify is None else notify
        if self.config.max_retries == 0:
            return await self._attempt(method, params, idempotency_key, state, as_notification)
        key = idempotency_key or uuid.uuid4().hex
        async for attempt in self._retrying():
            with attempt:
                return await self._attempt(method, params, key, state, as_notification)
        raise AssertionError("unreachable")  # pragma: no cover - AsyncRetrying reraises

    async def _attempt(
        self, method: str, params: Any, key: str | None, state: str | None, notify: bool
    ) -> Any:
        if notify:
            await self.transport.notify(method, params, deadline=self._deadline(), state=state)
            return None
        return await self.transport.call(
            method, params, deadline=self._deadline(), idempotency_key=key, state=state
        )

    async def call_batch(self, calls: list) -> list:
        """One JSON-RPC batch; returns a `CallOutcome` per call, in order."""
        from spark.client.transport import Call

        items = [c if isinstance(c, Call) else Call(*c) for c in calls]
        return await self.transport.batch(items, deadline=self._deadline())

    async def process(self, context: ExecutionContext) -> Any:
        inputs = context.inputs
        method, params = split_input(inputs.content, inputs.metadata, self.config.default_method)
        rpc_meta = (inputs.metadata or {}).get("rpc")
        key = rpc_meta.get("idempotency_key") if isinstance(rpc_meta, dict) else None
        return await self.call(
            method, params, idempotency_key=key, state=_state_namespace(context.graph_state)
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
