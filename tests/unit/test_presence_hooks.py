"""PresenceHooks: a worker runs the node's WebSocket hooks from presence messages, in order,
one at a time, whatever the hooks look like or do."""

from __future__ import annotations

import asyncio
import logging

from spark.broker import presence
from spark.broker.notify import Notification
from spark.runtime.presence import PresenceHooks, SocketAware
from support.polling import eventually


def note(method: str, params) -> Notification:
    return Notification(channel="spark:{svc}:sockets", method=method, params=params)


class Node:
    def __init__(self):
        self.heard = []

    async def on_websocket_connect(self, client_id, websocket):
        if client_id == "boom":
            raise RuntimeError("hook bug")
        await asyncio.sleep(0)  # a hook that awaits does not let the next one overtake it
        self.heard.append(("connect", client_id, websocket))

    async def on_websocket_disconnect(self, client_id):  # upstream's one-argument form
        self.heard.append(("disconnect", client_id))


async def test_hooks_run_in_order_with_ws_none(caplog):
    node = Node()
    assert isinstance(node, SocketAware)
    hooks = PresenceHooks(node)
    with caplog.at_level(logging.ERROR, logger="spark.worker"):
        for n in (
            note(presence.CONNECT, {"client_id": "a"}),
            note(presence.CONNECT, {"client_id": "boom"}),
            note(presence.DISCONNECT, {"client_id": "a"}),
            note(presence.CONNECT, {"nothing": 1}),  # malformed: skipped
            note("cancel", {"client_id": "a"}),  # not presence: skipped
        ):
            hooks.deliver(n)
        await eventually(lambda: len(node.heard) == 2, what="both hooks ran")
        await hooks.aclose()
    assert node.heard == [("connect", "a", None), ("disconnect", "a")]
    assert any("boom" in r.getMessage() for r in caplog.records)


async def test_a_hook_that_falls_behind_drops_messages_with_one_line(monkeypatch, caplog):
    monkeypatch.setattr("spark.runtime.presence.MAX_QUEUED", 3)
    release = asyncio.Event()

    class Slow:
        async def on_websocket_connect(self, client_id, websocket):
            await release.wait()

        async def on_websocket_disconnect(self, client_id, websocket):
            pass

    hooks = PresenceHooks(Slow())
    with caplog.at_level(logging.WARNING, logger="spark.worker"):
        for i in range(10):
            hooks.deliver(note(presence.CONNECT, {"client_id": str(i)}))
    lines = [r for r in caplog.records if "behind" in r.getMessage()]
    assert hooks.dropped == 7 and len(lines) == 1
    release.set()
    await hooks.aclose()


def test_only_hooks_that_do_something_make_a_worker_listen():
    from spark.nodes.rpc import RpcNode
    from spark.runtime.presence import wants_presence

    class Greeter(RpcNode):
        async def on_websocket_connect(self, client_id, websocket):
            pass

    class Leaver(RpcNode):
        async def on_websocket_disconnect(self, client_id):
            pass

    assert not wants_presence(RpcNode())  # the base class's do-nothing hooks
    assert wants_presence(Greeter()) and wants_presence(Leaver())
    assert wants_presence(Node())  # not an RpcNode: any hooks count
    assert not wants_presence(object())
