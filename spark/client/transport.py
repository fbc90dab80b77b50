"""The interface every client transport implements (redis, http, websocket).

A transport sends one JSON-RPC call (or notification, or batch) to one service and gives
back the result, raising the library's exceptions: an `RpcError` subclass for a JSON-RPC
error answer, `RpcTimeoutError` when the deadline passes, `RpcConnectionError` when the
broker or edge cannot be reached. Server-pushed notifications go to `on_notification`.

`deadline` (epoch seconds) travels with the request: the worker stops the handler at it.
`timeout`, when given, is how long this caller waits for the answer, when it is shorter than
the deadline: one attempt of a call that a proxy may retry with the same idempotency key.
Giving up at `timeout` leaves the request running for the retry to find; giving up at the
deadline or by being cancelled tells the workers to cancel it (where the transport can).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from spark.broker.keys import ServiceKeys, client_channel
from spark.broker.notify import Notification, NotificationListener
from spark.client.broker_client import BrokerClient
from spark.client.pool import release_client, shared_client
from spark.lifetime import close_with_loop

#: Called with (method, params) for every notification the transport receives.
NotificationHandler = Callable[[str, Any], Awaitable[None] | None]


@dataclass(slots=True)
class Call:
    """One call of a batch."""

    method: str
    params: Any = None
    notify: bool = False
    idempotency_key: str | None = None


@dataclass(slots=True)
class CallOutcome:
    """Per-item answer of a batch: a result or an error, never both."""

    result: Any = None
    error: Exception | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Transport(Protocol):
    on_notification: NotificationHandler | None

    async def call(
        self,
        method: str,
        params: Any = None,
        *,
        deadline: float,
        idempotency_key: str | None = None,
        state: str | None = None,
        timeout: float | None = None,
    ) -> Any: ...

    async def notify(
        self, method: str, params: Any = None, *, deadline: float, state: str | None = None
    ) -> None: ...

    async def batch(self, calls: list[Call], *, deadline: float) -> list[CallOutcome]: ...

    async def aclose(self) -> None: ...


@dataclass
class RedisTransport:
    """Calls through Redis directly: the shared BrokerClient of this process and URL."""

    url: str | None
    service: str
    on_notification: NotificationHandler | None = None
    _client: BrokerClient | None = field(default=None, init=False, repr=False)
    _listener: NotificationListener | None = field(default=None, init=False, repr=False)

    @property
    def client(self) -> BrokerClient:
        if self._client is None:
            self._client = shared_client(self.url)
        return self._client

    async def _listen(self) -> None:
        """Forward this service's broadcasts and this client's notifications, once asked to."""
        if self.on_notification is None or self._listener is not None:
            return
        handler = self.on_notification

        async def forward(note: Notification) -> None:
            if note.client_id is None and note.service != self.service:
                return
            result = handler(note.method, note.params)
            if inspect.isawaitable(result):
                await result

        close_with_loop(self)
        self._listener = NotificationListener(
            self.client.url,
            forward,
            channels=[
                client_channel(self.client.client_id),
                ServiceKeys.for_service(self.service).notify,
            ],
        )
        # Bounded: with Redis down the call itself should fail, not wait on the listener.
        await self._listener.start(timeout=1.0)

    async def call(
        self, method, params=None, *, deadline, idempotency_key=None, state=None, timeout=None
    ):
        await self._listen()
        return await self.client.call(
            self.service,
            method,
            params,
            deadline=deadline,
            idempotency_key=idempotency_key,
            state=state,
            wait=timeout,
            # As the edge and `spark call` do: no live worker answers -32003 at once
            # instead of waiting out the deadline.
            require_workers=True,
        )

    def cancel(self, idempotency_key: str) -> None:
        """Cancel every request of this client carrying `idempotency_key` (fire and forget)."""
        if self._client is not None:
            self._client.cancel(self.service, idempotency_key=idempotency_key)

    async def notify(self, method, params=None, *, deadline, state=None):
        await self._listen()
        await self.client.notify(self.service, method, params, deadline=deadline, state=state)

    async def batch(self, calls, *, deadline):
        async def one(c: Call) -> CallOutcome:
            try:
                if c.notify:
                    await self.notify(c.method, c.params, deadline=deadline)
                    return CallOutcome()
                return CallOutcome(
                    result=await self.call(
                        c.method, c.params, deadline=deadline, idempotency_key=c.idempotency_key
                    )
                )
            except Exception as exc:  # per-item errors are answers, not failures of the batch
                return CallOutcome(error=exc)

        return list(await asyncio.gather(*(one(c) for c in calls)))

    async def close(self) -> None:
        """Upstream's name for `aclose()`."""
        await self.aclose()

    def is_connected(self) -> bool:
        return self._client is not None and not self._client.closed

    async def aclose(self) -> None:
        if self._listener is not None:
            listener, self._listener = self._listener, None
            await listener.aclose()
        if self._client is not None:
            client, self._client = self._client, None
            await release_client(client)
