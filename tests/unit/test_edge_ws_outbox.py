"""The edge's per-connection WebSocket outbox is bounded (`ws_max_outbox`).

A client that sends requests but never reads its answers is disconnected with 1013 (try
again later): its queued answers are discarded, its requests in flight cancelled, and its
TCP connection aborted if it does not take the close frame either.
"""

from __future__ import annotations

import asyncio

import orjson
from aiohttp import WSCloseCode

from spark.runtime.edge import EdgeConfig
from spark.runtime.edge import websocket as edge_ws
from spark.runtime.edge.core import Edge
from spark.runtime.edge.websocket import WsConnection
from support.polling import eventually


class StubEdge(Edge):
    """No broker: "slow" never answers, anything else is answered at once."""

    async def run(self, service, parsed, **kwargs) -> bytes | None:
        req = parsed.requests[0]
        if req.method == "slow":
            await asyncio.Event().wait()
        return orjson.dumps({"jsonrpc": "2.0", "result": "x" * 100, "id": req.id})


class SilentWs:
    """A socket whose peer reads nothing: sends (and the close handshake) never finish."""

    def __init__(self):
        self.closed = False
        self.close_code: int | None = None
        self.sent = 0

    async def send_str(self, text: str) -> None:
        self.sent += 1
        await asyncio.Event().wait()

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        self.closed = True
        self.close_code = code
        await asyncio.Event().wait()
        return True


class Transport:
    aborted = False

    def abort(self) -> None:
        self.aborted = True


def req(method: str, id: int) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", "method": method, "id": id})


async def test_a_client_that_does_not_read_is_closed_1013_and_its_calls_cancelled(monkeypatch):
    monkeypatch.setattr(edge_ws, "OVERFLOW_CLOSE_GRACE", 0.05)
    edge = StubEdge(EdgeConfig(redis_url="redis://127.0.0.1:1", ws_max_outbox=3))
    ws, transport = SilentWs(), Transport()
    conn = WsConnection(edge, ws, "svc", 5.0, transport=transport)  # type: ignore[arg-type]
    conn.start()
    conn.received(req("slow", 0))
    conn.received(req("echo", 1))
    # Taken by the writer, which is stuck sending it.
    await eventually(lambda: ws.sent == 1, timeout=5, what="the writer sending answer 1")
    for i in range(2, 5):  # three more fill the outbox
        conn.received(req("echo", i))
    await eventually(lambda: conn._outbox.qsize() == 3, timeout=5, what="three answers queued")
    assert not conn.overflowed and conn._outbox.qsize() == 3 and ws.sent == 1
    assert not conn.push("a notification")  # a full outbox drops notifications

    conn.received(req("echo", 5))  # a fourth unread answer: past ws_max_outbox
    await eventually(
        lambda: conn.overflowed and ws.close_code is not None and not conn.tasks,
        timeout=5,
        what="the overflow handled: closing, calls cancelled",
    )
    assert ws.close_code == WSCloseCode.TRY_AGAIN_LATER == 1013
    assert conn._outbox.qsize() == 0  # queued answers discarded, not held
    assert not conn.tasks  # the slow call was cancelled
    conn.received(req("echo", 6))  # nothing more is run for this client
    assert not conn.tasks
    assert not conn.push("a notification")

    # It did not take the close frame within the grace.
    await eventually(lambda: transport.aborted, timeout=5, what="the transport aborted")
    await conn.finish()


async def test_a_client_that_reads_keeps_its_connection():
    edge = StubEdge(EdgeConfig(redis_url="redis://127.0.0.1:1", ws_max_outbox=3))

    class ReadingWs(SilentWs):
        async def send_str(self, text: str) -> None:
            self.sent += 1

    ws, transport = ReadingWs(), Transport()
    conn = WsConnection(edge, ws, "svc", 5.0, transport=transport)  # type: ignore[arg-type]
    conn.start()
    for i in range(50):
        conn.received(req("echo", i))
        await asyncio.sleep(0)
    await eventually(lambda: ws.sent == 50, timeout=5, what="all 50 answers sent")
    assert ws.sent == 50 and not conn.overflowed and ws.close_code is None
    await conn.finish()
    assert not transport.aborted
