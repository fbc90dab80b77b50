"""Item 3: a spark-edge process restarted (same port) while HTTP and WebSocket clients call.

In-flight calls end with a result or a clean RpcConnectionError / RpcTimeoutError, none
past its deadline; afterwards both transports work again, and an idle WebSocket transport
(with a notification handler) reconnects by itself, without a call.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter

import pytest

from spark.client.http import HttpTransport
from spark.client.websocket import WebSocketTransport
from spark.errors import RpcConnectionError, RpcError, RpcTimeoutError
from support.lab import TARGET, EdgeProcess, apoll, report
from support.processes import WorkerProcess

pytestmark = pytest.mark.timeout(120)

DEADLINE = 4.0
CLEAN = {"ok", "RpcConnectionError", "RpcTimeoutError"}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_edge_restart_under_http_and_ws_load(redis_url, sig):
    worker = WorkerProcess(TARGET, redis_url, "--concurrency", "64", service="lab")
    edge = EdgeProcess(redis_url, "--shutdown-timeout", "2")
    outcomes: dict[str, Counter] = {"http": Counter(), "ws": Counter()}
    ok_after: Counter = Counter()
    restarted: list[float] = []
    stop = asyncio.Event()
    http = HttpTransport(f"http://127.0.0.1:{edge.port}")
    ws = WebSocketTransport(f"http://127.0.0.1:{edge.port}")
    idle = WebSocketTransport(f"http://127.0.0.1:{edge.port}", on_notification=lambda m, p: None)
    try:
        await asyncio.to_thread(worker.wait_ready)
        await asyncio.to_thread(edge.start)

        calls: list[tuple[str, float, float, str]] = []

        async def one(t) -> str:
            try:
                await asyncio.wait_for(
                    t.call("sleep", {"seconds": 0.1}, deadline=time.time() + DEADLINE),
                    timeout=DEADLINE + 3,
                )
                return "ok"
            except RpcTimeoutError:
                return "RpcTimeoutError"
            except TimeoutError:
                return "hang"
            except RpcConnectionError:
                return "RpcConnectionError"
            except RpcError as exc:
                return f"RpcError[{exc.code}]"
            except Exception as exc:
                return type(exc).__name__

        async def lane(kind: str, t) -> None:
            while not stop.is_set():
                began = time.monotonic()
                result = await one(t)
                calls.append((kind, began, time.monotonic(), result))
                outcomes[kind][result] += 1
                if result == "ok" and restarted:
                    ok_after[kind] += 1
                if result == "RpcConnectionError":
                    await asyncio.sleep(0.05)  # the edge is away: do not spin

        await idle.connect(time.time() + 5)
        assert idle.connections == 1
        lanes = [asyncio.create_task(lane("http", http)) for _ in range(8)]
        lanes += [asyncio.create_task(lane("ws", ws)) for _ in range(8)]
        await apoll(
            lambda: outcomes["http"]["ok"] >= 50 and outcomes["ws"]["ok"] >= 50,
            timeout=30,
            what="load before the restart",
        )
        t0 = time.monotonic()
        await asyncio.to_thread(edge.stop, sig)
        await asyncio.to_thread(edge.start)
        restarted.append(time.monotonic())
        # The idle WebSocket transport comes back by itself (no call made on it).
        await apoll(lambda: idle.connected and idle.connections >= 2, timeout=20, what="ws back")
        ws_back = time.monotonic() - restarted[0]
        await apoll(
            lambda: ok_after["http"] >= 20 and ok_after["ws"] >= 20,
            timeout=20,
            what="both transports answering after the restart",
        )
        recovered = time.monotonic() - restarted[0]
        stop.set()
        await asyncio.wait_for(asyncio.gather(*lanes), timeout=DEADLINE + 10)
        # And a fresh call on each still works.
        assert await http.call("echo", {"h": 1}, deadline=time.time() + 5) == {"h": 1}
        assert await ws.call("echo", {"w": 1}, deadline=time.time() + 5) == {"w": 1}
        assert await idle.call("echo", {"i": 1}, deadline=time.time() + 5) == {"i": 1}
        report(
            f"edge_restart[{signal.Signals(sig).name}]",
            http=dict(outcomes["http"]),
            ws=dict(outcomes["ws"]),
            edge_down_s=restarted[0] - t0,
            idle_ws_reconnected_s=ws_back,
            both_ok_after_s=recovered,
            ws_connections=ws.connections,
        )
        # HTTP calls in flight when SIGTERM arrived are finished by the graceful shutdown.
        inflight_http = [c for c in calls if c[0] == "http" and c[1] < t0 < c[2]]
        report(
            f"edge_restart[{signal.Signals(sig).name}].inflight_http",
            inflight=len(inflight_http),
            outcomes=dict(Counter(c[3] for c in inflight_http)),
        )
        if sig == signal.SIGTERM:
            assert inflight_http and all(c[3] == "ok" for c in inflight_http), inflight_http
        for kind in ("http", "ws"):
            assert set(outcomes[kind]) <= CLEAN, outcomes[kind]
            assert outcomes[kind]["hang"] == 0
    finally:
        stop.set()
        for t in (http, ws, idle):
            await t.aclose()
        edge.stop(signal.SIGKILL)
        worker.stop()
