"""Notifications over Redis pub/sub.

A notification is a JSON-RPC notification object published on the service's channel
(every client of the service) or on one client's channel. On one Redis every edge
subscribes to all of them with one pattern subscription and forwards to its WebSocket
clients; a client process subscribes to its own channel.

On a Redis Cluster notifications use sharded pub/sub (SPUBLISH/SSUBSCRIBE): a channel lives
on the shard that owns its slot (a service's channel on its `{svc}` shard), instead of every
message being copied to every node. Sharded pub/sub has no patterns, so there an edge
subscribes to the channels of what it serves: the service channel of each service it has
WebSocket clients of, and the channel of each WebSocket client (`add` / `discard`).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import RedisError
from redis.retry import Retry

from spark.aio import cancel_and_wait, reraise_cancellation
from spark.broker import UNREACHABLE, connection
from spark.broker.connection import connect, is_cluster_url
from spark.broker.keys import ServiceKeys, client_channel
from spark.broker.retrying import Backoff

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
    return await connection.publish(
        redis, channel(service, client_id), message(method, params, service=service)
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
    """Pub/sub connections that feed every notification they get to `callback`.

    Subscribes to `channels` and `patterns` (the edge on one Redis: `keys.NOTIFY_PATTERN`; a
    client process: its `client_channel`); `add` and `discard` change the channels while it
    runs. On a cluster (sharded pub/sub, no patterns) it holds one connection per shard that
    owns one of its channels. After a Redis restart, a dropped connection or a failover it
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
        self.channels = list(dict.fromkeys(channels))
        self.patterns = list(patterns)
        self.poll_timeout = poll_timeout
        #: Sharded pub/sub (a Redis Cluster): channels only, each on its own shard.
        self.sharded = is_cluster_url(url)
        if self.sharded and self.patterns:
            raise ValueError("sharded pub/sub (Redis Cluster) has no pattern subscriptions")
        self.subscribed = asyncio.Event()
        #: How many times a connection was (re)established.
        self.connections = 0
        self._task: asyncio.Task | None = None
        self._session: _Session | None = None
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

    async def add(self, *channels: str, timeout: float = 5.0) -> bool:
        """Subscribe to more channels; True once the server confirmed them.

        False when Redis is unreachable now: they are subscribed on the next reconnection.
        """
        new = [c for c in dict.fromkeys(channels) if c not in self.channels]
        self.channels.extend(new)
        session = self._session
        if not new or session is None:
            return not new
        try:
            async with asyncio.timeout(timeout):
                await session.subscribe(new)
        except (TimeoutError, RuntimeError, *UNREACHABLE, RedisError) as exc:
            log.info("subscribing to %d channel(s) failed (%s); will retry", len(new), exc)
            session.fail(exc)
            return False
        return True

    def discard(self, *channels: str) -> None:
        """Stop receiving these channels (in the background; never raises)."""
        gone = [c for c in channels if c in self.channels]
        if not gone:
            return
        self.channels = [c for c in self.channels if c not in gone]
        if self._session is not None:
            self._session.unsubscribe(gone)

    async def _run(self) -> None:
        retry = Backoff("notification listener", logger=log)
        while not self._closed:
            session = _Session(self)
            failure: BaseException | None = None
            try:
                async with asyncio.timeout(max(5.0, 5 * self.poll_timeout)):
                    await session.open()
                self._session = session
                self.connections += 1
                retry.succeeded()
                self.subscribed.set()
                await session.failed
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis errors above all; the listener must live on
                failure = exc
            finally:
                self._session = None
                self.subscribed.clear()
                await session.close()
            if failure is not None and not self._closed:
                await retry.pause(failure)

    async def _deliver(self, msg: dict[str, Any]) -> None:
        note = decode(msg["channel"], msg["data"])
        if note is None:
            return
        try:
            result = self.callback(note)
            if inspect.isawaitable(result):
                await result
        except Exception:
            log.exception("notification callback failed for %s", note.channel)


_CONFIRMS = ("subscribe", "ssubscribe", "psubscribe")
_MESSAGES = ("message", "pmessage", "smessage")


def _by_slot(channels: list[str]) -> list[list[str]]:
    """SSUBSCRIBE takes several channels only when they share one slot."""
    groups: dict[int, list[str]] = defaultdict(list)
    for ch in channels:
        groups[key_slot(ch.encode())].append(ch)
    return list(groups.values())


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


class _Session:
    """One connected spell of a listener: its pub/sub connections and their readers.

    One connection on a single Redis; on a cluster one per shard, each reading its own
    socket. Any reader's failure (a dead node, a slot that moved away) ends the session
    and the listener starts a fresh one from the current cluster topology.
    """

    def __init__(self, listener: NotificationListener):
        self.listener = listener
        self.redis: Any = None
        self.pubsubs: dict[str, PubSub] = {}
        self.node_clients: list[aioredis.Redis] = []
        self.readers: list[asyncio.Task] = []
        self.tasks: set[asyncio.Task] = set()
        self.failed: asyncio.Future = asyncio.get_running_loop().create_future()
        self.confirms: dict[str, asyncio.Future] = {}
        self.leaving: Counter[str] = Counter()
        # One subscribe command at a time: a pubsub opens its connection on its first
        # command, and two first commands at once would ask its one-connection pool twice.
        self.commands = asyncio.Lock()

    async def open(self) -> None:
        listener = self.listener
        self.redis = connect(
            listener.url, max_connections=1, socket_timeout=listener.poll_timeout + 10
        )
        if listener.sharded:
            await self.redis.initialize()
        await self.subscribe(listener.channels, listener.patterns)

    def fail(self, exc: BaseException) -> None:
        if not self.failed.done():
            self.failed.set_exception(exc)

    def _route(self, channel: str) -> str:
        if not self.listener.sharded:
            return ""
        return self.redis.get_node_from_key(channel).name

    def _pubsub(self, name: str) -> tuple[PubSub, bool]:
        pubsub = self.pubsubs.get(name)
        if pubsub is not None:
            return pubsub, False
        if self.listener.sharded:
            # A plain connection to the shard's node: SSUBSCRIBE is answered by the node
            # that owns the slot, and its failure must not be retried against a dead node.
            node = self.redis.get_node(node_name=name)
            kwargs = {**node.connection_kwargs, "retry": Retry(NoBackoff(), 0)}
            pool = aioredis.ConnectionPool(
                connection_class=node.connection_class, max_connections=1, **kwargs
            )
            client = aioredis.Redis(connection_pool=pool)
            client.auto_close_connection_pool = True
            self.node_clients.append(client)
        else:
            client = self.redis
        pubsub = self.pubsubs[name] = client.pubsub()
        return pubsub, True

    async def subscribe(self, channels: Iterable[str], patterns: Iterable[str] = ()) -> None:
        """Subscribe and wait for the server's confirmations (or this session's failure)."""
        groups: dict[str, list[str]] = defaultdict(list)
        for ch in channels:
            groups[self._route(ch)].append(ch)
        patterns = list(patterns)
        waits: list[asyncio.Future] = []
        async with self.commands:
            await self._send_subscribe(groups, patterns, waits)
        if waits:
            await asyncio.wait(
                [asyncio.gather(*waits), self.failed], return_when=asyncio.FIRST_COMPLETED
            )
            if self.failed.cancelled():
                raise RuntimeError("listener session ended")
            if self.failed.done():
                raise self.failed.exception() or RuntimeError("listener session ended")

    async def _send_subscribe(
        self, groups: dict[str, list[str]], patterns: list[str], waits: list[asyncio.Future]
    ) -> None:
        loop = asyncio.get_running_loop()
        for name in set(groups) | ({""} if patterns else set()):
            pubsub, new = self._pubsub(name)
            chs = groups.get(name, [])
            for ch in chs + (patterns if name == "" else []):
                # The server confirms a repeated subscribe too: a confirmed (done) future
                # is replaced, a pending one shared with the subscribe already under way.
                fut = self.confirms.get(ch)
                if fut is None or fut.done():
                    fut = self.confirms[ch] = loop.create_future()
                waits.append(fut)
            if chs:
                if self.listener.sharded:
                    for same_slot in _by_slot(chs):
                        await pubsub.ssubscribe(*same_slot)
                else:
                    await pubsub.subscribe(*chs)
            if patterns and name == "":
                await pubsub.psubscribe(*patterns)
            if new:
                self.readers.append(asyncio.create_task(self._read(pubsub)))

    def unsubscribe(self, channels: list[str]) -> None:
        task = asyncio.get_running_loop().create_task(self._unsubscribe(channels))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _unsubscribe(self, channels: list[str]) -> None:
        try:
            async with self.commands:
                # Under the lock, after any subscribe sent meanwhile: a channel added again
                # since it was discarded (a service's last client left, a new one came)
                # stays subscribed.
                groups: dict[str, list[str]] = defaultdict(list)
                for ch in channels:
                    if ch not in self.listener.channels:
                        self.confirms.pop(ch, None)
                        groups[self._route(ch)].append(ch)
                for name, chs in groups.items():
                    pubsub = self.pubsubs.get(name)
                    if pubsub is None:
                        continue
                    self.leaving.update(chs)
                    if self.listener.sharded:
                        for same_slot in _by_slot(chs):
                            await pubsub.sunsubscribe(*same_slot)
                    else:
                        await pubsub.unsubscribe(*chs)
        except Exception as exc:  # the connection's reader notices and reconnects
            log.debug("unsubscribing failed: %s", exc)

    async def _read(self, pubsub: PubSub) -> None:
        listener = self.listener
        try:
            while True:
                msg = await pubsub.get_message(timeout=listener.poll_timeout)
                reraise_cancellation()  # redis-py may have swallowed one
                if msg is None:
                    continue
                kind = msg["type"]
                if kind in _MESSAGES:
                    await listener._deliver(msg)
                    continue
                # Confirmations name the channel (or pattern) in "channel".
                name = _text(msg["channel"])
                if kind in _CONFIRMS:
                    fut = self.confirms.get(name)
                    if fut is not None and not fut.done():
                        fut.set_result(None)
                elif kind == "sunsubscribe":
                    if self.leaving[name] > 0:
                        self.leaving[name] -= 1
                    elif name in listener.channels:
                        # The server dropped it: its slot moved to another shard.
                        raise RuntimeError(f"shard channel {name} moved")
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.fail(exc)

    async def close(self) -> None:
        """Close every connection, even when cancelled (again) meanwhile: the listener's
        owner, or the loop shutting down, may cancel it while it cleans up, which must not
        leave sockets open. A cancellation is re-raised once everything is closed."""
        interrupted = False

        async def step(make: Callable[[], Awaitable[Any]]) -> None:
            nonlocal interrupted
            for _attempt in range(3):
                try:
                    await make()
                    return
                except asyncio.CancelledError:
                    interrupted = True
                except Exception as exc:  # closing anyway
                    log.debug("closing the listener: %r", exc)
                    return

        await step(lambda: cancel_and_wait(*self.readers, *self.tasks))
        # `failed` is cancelled too when the task awaiting it was; exception() would raise.
        if not self.failed.done():
            self.failed.cancel()
        elif not self.failed.cancelled():
            self.failed.exception()  # retrieved: never "exception was never retrieved"
        for pubsub in self.pubsubs.values():
            await step(pubsub.aclose)
        for client in self.node_clients:
            await step(client.aclose)
        if self.redis is not None:
            await step(self.redis.aclose)
        if interrupted:
            raise asyncio.CancelledError
