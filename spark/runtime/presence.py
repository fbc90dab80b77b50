"""A served node's WebSocket hooks, run by a worker from the edges' presence messages.

A node in a worker pool behind a separate `spark-edge` learns of WebSocket clients through
`spark.broker.presence`: every worker of the service hears every "connected" and "left" and
runs the node's `on_websocket_connect(client_id, None)` / `on_websocket_disconnect(client_id,
None)`. The socket itself lives in the edge's process, so `ws` is None; talk to the client
with `send_notification_to_client(client_id, ...)`. The hooks run one at a time, in the
order heard, off the listener's read loop (a slow hook never delays cancellations).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar, runtime_checkable

from spark.aio import cancel_and_wait
from spark.broker import presence
from spark.broker.notify import Notification

log = logging.getLogger("spark.worker")

#: A WebSocket hook as the edge and the worker call it: `(client_id, ws)`.
SocketHook = Callable[[str, Any], Awaitable[None]]

#: Presence messages waiting for a slow hook before new ones are dropped (with a warning).
MAX_QUEUED = 10_000


@runtime_checkable
class SocketAware(Protocol):
    """A served target that wants to know of WebSocket clients connecting and leaving."""

    async def on_websocket_connect(self, client_id: str, websocket: Any) -> None: ...

    async def on_websocket_disconnect(self, client_id: str, websocket: Any = None) -> None: ...


_DEFAULT = "__spark_default_hook__"

F = TypeVar("F", bound=Callable[..., Any])


def default_hook(fn: F) -> F:
    """Marks a base class's do-nothing hook: a worker whose node keeps both does not
    subscribe to presence messages, so edges stop publishing them for its service."""
    setattr(fn, _DEFAULT, True)
    return fn


def wants_presence(target: object) -> bool:
    """Whether `target` has WebSocket hooks that do something (not the base defaults)."""
    if not isinstance(target, SocketAware):
        return False
    hooks = (target.on_websocket_connect, target.on_websocket_disconnect)
    return not all(getattr(hook, _DEFAULT, False) for hook in hooks)


def socket_hook(hook: Callable[..., Awaitable[None]]) -> SocketHook:
    """`hook(client_id, ws)`, called with `(client_id)` alone when that is all it takes
    (both forms appear in upstream's docs)."""
    try:
        positional = [
            p
            for p in inspect.signature(hook).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
    except (TypeError, ValueError):
        positional = []
    if len(positional) == 1:

        async def call_with_id(client_id: str, _ws: Any) -> None:
            await hook(client_id)

        return call_with_id
    return hook


class PresenceHooks:
    """Runs `target`'s WebSocket hooks for the presence messages its worker hears."""

    def __init__(self, target: SocketAware):
        self.hooks = {
            presence.CONNECT: socket_hook(target.on_websocket_connect),
            presence.DISCONNECT: socket_hook(target.on_websocket_disconnect),
        }
        self._queue: asyncio.Queue[tuple[SocketHook, str]] = asyncio.Queue(MAX_QUEUED)
        self._task: asyncio.Task[None] | None = None
        #: Messages dropped because the hooks fell MAX_QUEUED behind.
        self.dropped = 0
        self._behind = False

    def deliver(self, note: Notification) -> None:
        """A presence message from the listener (never blocks, never raises)."""
        hook = self.hooks.get(note.method)
        client_id = presence.client_id_of(note.params)
        if hook is None or client_id is None:
            return
        try:
            self._queue.put_nowait((hook, client_id))
        except asyncio.QueueFull:
            self.dropped += 1
            if not self._behind:  # one line per episode; `dropped` counts them all
                self._behind = True
                log.warning("websocket hooks fell %d messages behind: dropping", MAX_QUEUED)
            return
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="spark-websocket-hooks")

    async def _run(self) -> None:
        while True:
            if self._queue.empty():
                self._behind = False
            hook, client_id = await self._queue.get()
            try:
                await hook(client_id, None)
            except Exception:
                log.exception("websocket %s: connection hook failed", client_id)

    async def aclose(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None
