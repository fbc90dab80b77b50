"""Notifications over Redis pub/sub.

A notification is a JSON-RPC notification object published on the service's channel
(every client of the service) or on one client's channel. Every edge subscribes to all of
them with one pattern subscription and forwards to its WebSocket clients; a client process
subscribes to its own channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis

from spark.aio import cancel_and_wait, reraise_cancellation
from spark.broker import UNREACHABLE
from spark.broker.connection import connect
from spark.broker.keys import ServiceKeys, client_channel

log = logging.getLogger("spark.notify")


def message(method: str, params: Any = None, *, service: str | None = None) -> bytes:
    doc: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        doc["params"] = params
    if service is not None:
        # Outside the JSON-RPC members: tells a subscriber which service spoke.
        doc["service"] = service
    return orjson.dumps(doc)


def channel(service: str, client_id: str | None) -> str:
    return client_channel(client_id) if client_id else ServiceKeys.for_service(service).notify


async def publish(
    redis: aioredis.Redis, service: str, client_id: str | None, method: str, params: Any = None
) -> int:
    """Publish; returns how many subscribers (edges, client processes) received it."""
    return await redis.publish(
        channel(service, client_id), message(method, params, service=service)
    )


# -- subscribing ---------------------------------------------------------------------------

#: Every client channel starts with this (derived from keys.py, never spelled out here).
CLIENT_CHANNEL_PREFIX = client_channel("")


@dataclass(slots=True)
class Notification:
    """One notification read from a channel."""

    channel: str
    method: str
    params: Any = None
    #: The service that published it (the "service" member of the message).
    service: str | None = None
    #: The target client for a client-channel message; None for a service broadcast.
    client_id: str | None = None

    def to_jsonrpc(self) -> bytes:
        """The message as a plain JSON-RPC notification (without the "service" member)."""
        doc: dict[str, Any] = {"jsonrpc": "2.0", "method": self.method}
        if self.params is not None:
            doc["params"] = self.params
        return orjson.dumps(doc)


def decode(channel: str | bytes, data: bytes | str) -> Notification | None:
    """Read a published message; None when it is not a notification (logged, never raised)."""
    if isinstance(channel, bytes):
        channel = channel.decode("utf-8", "replace")
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        log.warning("dropping a notification on %s that is not JSON", channel)
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("method"), str):
        log.warning("dropping a malformed notification on %s", channel)
        return None
    service = doc.get("service")
    client_id = None
    if channel.startswith(CLIENT_CHANNEL_PREFIX):
        client_id = channel[len(CLIENT_CHANNEL_PREFIX) :]
    return Notification(
        channel=channel,
        method=doc["method"],
        params=doc.get("params"),
        service=service if isinstance(service, str) else None,
        client_id=client_id,
    )


NotificationCallback = Callable[[Notification], Awaitable[None] | None]


class NotificationListener:
    """One pub/sub connection that feeds every notification it gets to `callback`.

    Subscribes to `channels` and `patterns` (the edge: `keys.NOTIFY_PATTERN`; a client
    process: its `client_channel`). After a Redis restart or a dropped connection it
    reconnects and subscribes again by itself, backing off while Redis is down; messages
    published meanwhile are lost (pub/sub keeps nothing). `subscribed` is set while the
    subscriptions are confirmed by the server, so a caller can wait for it before relying on
    delivery. A callback that raises is logged and skipped.
    """

    def __init__(
        self,
        url: str,
        callback: NotificationCallback,
        *,
        channels: Iterable[str] = (),
        patterns: Iterable[str] = (),
        poll_timeout: float = 1.0,
    ):
        self.url = url
        self.callback = callback
        self.channels = list(channels)
        self.patterns = list(patterns)
        self.poll_timeout = poll_timeout
        self.subscribed = asyncio.Event()
        #: How many times a connection was (re)established.
        self.connections = 0
        self._task: asyncio.Task | None = None
        self._closed = False

    async def start(self, timeout: float | None = 10.0) -> NotificationListener:
        """Start listening; waits (up to `timeout`) until the subscriptions are confirmed.

        Returns anyway when Redis is unreachable: the listener keeps trying in the background.
        """
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="spark-notify-listener")
        if timeout:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self.subscribed.wait()
        return self

    async def aclose(self) -> None:
        self._closed = True
        await cancel_and_wait(self._task)
        self._task = None

    async def __aenter__(self) -> NotificationListener:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run(self) -> None:
        failures = 0
        while not self._closed:
            redis = connect(self.url, max_connections=1, socket_timeout=self.poll_timeout + 10)
            pubsub = redis.pubsub()
            try:
                await self._subscribe(pubsub)
                self.connections += 1
                failures = 0
                await self._listen(pubsub)
            except asyncio.CancelledError:
                raise
            except (*UNREACHABLE, RuntimeError) as exc:
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    log.warning("notification listener lost Redis (%s); reconnecting", exc)
            finally:
                self.subscribed.clear()
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
                with contextlib.suppress(Exception):
                    await redis.aclose()
            if not self._closed:
                await asyncio.sleep(min(0.05 * 2 ** min(failures, 6), 2.0))

    async def _subscribe(self, pubsub: Any) -> None:
        if self.channels:
            await pubsub.subscribe(*self.channels)
        if self.patterns:
            await pubsub.psubscribe(*self.patterns)
        # Wait for the server's confirmations: after them, nothing published is missed.
        expected = len(self.channels) + len(self.patterns)
        confirmed = 0
        while confirmed < expected:
            msg = await pubsub.get_message(timeout=self.poll_timeout)
            if msg is None:
                continue
            if msg["type"] in ("subscribe", "psubscribe"):
                confirmed += 1
            else:
                await self._deliver(msg)
        self.subscribed.set()

    async def _listen(self, pubsub: Any) -> None:
        while not self._closed:
            msg = await pubsub.get_message(timeout=self.poll_timeout)
            reraise_cancellation()  # redis-py may have swallowed one
            if msg is not None:
                await self._deliver(msg)

    async def _deliver(self, msg: dict[str, Any]) -> None:
        if msg["type"] not in ("message", "pmessage"):
            return
        note = decode(msg["channel"], msg["data"])
        if note is None:
            return
        try:
            result = self.callback(note)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("notification callback failed for %s", note.channel)
