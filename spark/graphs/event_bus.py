"""An in-process publish/subscribe bus for graph lifecycle events and node notifications.

Topics are dotted names (`node.finished`, `remote.rpc.progress`). A subscription pattern is
an exact topic, `*` for every topic, or a prefix ending in `.*`: `remote.rpc.*` matches
`remote.rpc.x` and `remote.rpc.x.y` but not `remote.rpc` itself.

Handlers run one after another in subscription order, inside `publish`, so a publisher
knows its event has been seen when `publish` returns. A handler that raises is logged and
skipped; it never reaches the publisher (a broken logger must not fail a workflow).
"""

from __future__ import annotations

import inspect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Event", "EventBus", "Handler"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Event:
    topic: str
    payload: Any
    metadata: dict[str, Any] = field(default_factory=dict)
    timestamp: float = field(default_factory=time.time)


Handler = Callable[[Event], Awaitable[Any] | Any]


def _check_pattern(pattern: str) -> None:
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"topic pattern must be a non-empty string, got {pattern!r}")
    body = pattern[:-2] if pattern.endswith(".*") else pattern
    if pattern != "*" and "*" in body:
        # Only whole-topic and trailing wildcards are supported; failing here beats a
        # subscription that silently never matches.
        raise ValueError(f"unsupported wildcard in {pattern!r}: use '*' or a 'prefix.*' pattern")


def matches(pattern: str, topic: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith(".*"):
        return topic.startswith(pattern[:-1])
    return pattern == topic


@dataclass(frozen=True, slots=True)
class _Subscription:
    pattern: str
    handler: Handler


class EventBus:
    def __init__(self) -> None:
        self._subscriptions: dict[str, _Subscription] = {}

    def subscribe(self, topic: str, handler: Handler) -> str:
        """Call `handler(event)` (sync or async) for every event matching `topic`.

        Returns a subscription id for `unsubscribe`.
        """
        _check_pattern(topic)
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {handler!r}")
        sub_id = uuid.uuid4().hex
        self._subscriptions[sub_id] = _Subscription(topic, handler)
        return sub_id

    def unsubscribe(self, subscription_id: str) -> bool:
        """Remove a subscription; False when the id is unknown (or already removed)."""
        return self._subscriptions.pop(subscription_id, None) is not None

    def has_subscribers(self, topic: str) -> bool:
        return any(matches(s.pattern, topic) for s in self._subscriptions.values())

    async def publish(
        self, topic: str, payload: Any, metadata: Mapping[str, Any] | None = None
    ) -> int:
        """Deliver an event to every matching handler; returns how many were called."""
        if not self._subscriptions:
            return 0
        event = Event(topic, payload, dict(metadata or {}))
        delivered = 0
        # A snapshot, so handlers may (un)subscribe while we deliver.
        for sub_id, sub in list(self._subscriptions.items()):
            if not matches(sub.pattern, topic) or sub_id not in self._subscriptions:
                continue
            delivered += 1
            try:
                result = sub.handler(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("event handler %r for topic %r failed", sub.handler, topic)
        return delivered
