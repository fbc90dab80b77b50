"""EventBus: topic matching, unsubscribe, handler kinds and handler failures."""

from __future__ import annotations

import logging

import pytest

from spark.graphs import Event, EventBus
from spark.graphs.event_bus import matches


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("node.finished", "node.finished", True),
        ("node.finished", "node.finished.x", False),
        ("node.finished", "node.started", False),
        ("*", "anything.at.all", True),
        ("*", "x", True),
        ("remote.rpc.*", "remote.rpc.x", True),
        ("remote.rpc.*", "remote.rpc.x.y", True),
        ("remote.rpc.*", "remote.rpc", False),
        ("remote.rpc.*", "remote.rpcx.y", False),
        ("remote.rpc.*", "remote.other.x", False),
    ],
)
def test_matches(pattern, topic, expected):
    assert matches(pattern, topic) is expected


async def test_exact_wildcard_and_prefix_subscriptions():
    bus = EventBus()
    got: dict[str, list[str]] = {"exact": [], "all": [], "prefix": []}
    bus.subscribe("remote.rpc.progress", lambda e: got["exact"].append(e.topic))
    bus.subscribe("*", lambda e: got["all"].append(e.topic))
    bus.subscribe("remote.rpc.*", lambda e: got["prefix"].append(e.topic))

    for topic in ("remote.rpc.progress", "remote.rpc.job.done", "graph.started"):
        await bus.publish(topic, {})

    assert got["exact"] == ["remote.rpc.progress"]
    assert got["all"] == ["remote.rpc.progress", "remote.rpc.job.done", "graph.started"]
    assert got["prefix"] == ["remote.rpc.progress", "remote.rpc.job.done"]


async def test_event_carries_topic_payload_and_metadata():
    bus = EventBus()
    seen: list[Event] = []
    bus.subscribe("t", seen.append)
    count = await bus.publish("t", {"p": 1}, {"m": 2})
    assert count == 1
    (event,) = seen
    assert (event.topic, event.payload, event.metadata) == ("t", {"p": 1}, {"m": 2})
    await bus.publish("t", "plain")
    assert seen[1].metadata == {}


async def test_sync_and_async_handlers_both_called_in_subscription_order():
    bus = EventBus()
    order = []

    def sync_handler(event):
        order.append(("sync", event.payload))

    async def async_handler(event):
        order.append(("async", event.payload))

    bus.subscribe("t", async_handler)
    bus.subscribe("t", sync_handler)
    assert await bus.publish("t", 7) == 2
    assert order == [("async", 7), ("sync", 7)]


async def test_unsubscribe():
    bus = EventBus()
    seen = []
    sub = bus.subscribe("t", seen.append)
    assert bus.has_subscribers("t")
    assert bus.unsubscribe(sub) is True
    assert bus.unsubscribe(sub) is False
    assert bus.unsubscribe("never-issued") is False
    assert await bus.publish("t", 1) == 0
    assert seen == []
    assert not bus.has_subscribers("t")


async def test_failing_handler_is_logged_and_does_not_stop_others(caplog):
    bus = EventBus()
    seen = []

    def broken(event):
        raise RuntimeError("handler bug")

    async def broken_async(event):
        raise ValueError("async handler bug")

    bus.subscribe("t", broken)
    bus.subscribe("t", broken_async)
    bus.subscribe("t", seen.append)
    with caplog.at_level(logging.ERROR, logger="spark.graphs.event_bus"):
        count = await bus.publish("t", "payload")  # must not raise
    assert count == 3
    assert [e.payload for e in seen] == ["payload"]
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert {type(r.exc_info[1]) for r in errors} == {RuntimeError, ValueError}


async def test_handler_may_unsubscribe_another_during_delivery():
    bus = EventBus()
    seen = []
    subs = {}

    def first(event):
        seen.append("first")
        bus.unsubscribe(subs["second"])

    subs["first"] = bus.subscribe("t", first)
    subs["second"] = bus.subscribe("t", lambda e: seen.append("second"))
    await bus.publish("t", None)
    assert seen == ["first"]


async def test_handler_may_subscribe_during_delivery_without_getting_the_current_event():
    bus = EventBus()
    seen = []

    def first(event):
        seen.append(("first", event.payload))
        bus.subscribe("t", lambda e: seen.append(("late", e.payload)))

    bus.subscribe("t", first)
    await bus.publish("t", 1)
    assert seen == [("first", 1)]


@pytest.mark.parametrize("pattern", ["", "a.*.c", "a*", "*.b"])
def test_unsupported_patterns_are_rejected(pattern):
    with pytest.raises(ValueError):
        EventBus().subscribe(pattern, lambda e: None)


def test_handler_must_be_callable():
    with pytest.raises(TypeError):
        EventBus().subscribe("t", "not callable")
