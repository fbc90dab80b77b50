"""`on_websocket_connect` / `on_websocket_disconnect` for a node in a worker pool behind a
separate `spark-edge`: the edge publishes each client's arrival and departure, and every
worker of the service runs the node's hooks (with `ws` None: the socket is in the edge's
process). Real processes: redis-server, two `spark-worker`s, one `spark-edge`."""

from __future__ import annotations

import signal
import subprocess
import sys

import aiohttp
import pytest
import redis.asyncio as aioredis

from spark.broker.keys import ServiceKeys
from spark.nodes.rpc import RpcNode
from spark.protocol.wire import CLIENT_ID_HEADER
from spark.runtime.edge import EdgeConfig, EdgeServer
from support.polling import eventually
from support.processes import WorkerProcess, env
from support.redis_server import free_port, wait_until

pytestmark = pytest.mark.integration

SERVICE = "presence"


def health(url: str) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            return resp.status
    except (urllib.error.URLError, OSError):
        return 0


@pytest.fixture
def edge(redis_url):
    port = free_port()
    cmd = [sys.executable, "-m", "spark.cli.edge", "--redis", redis_url, "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env())
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: health(url) == 200 or proc.poll() is not None, timeout=20)
        assert proc.poll() is None
        yield url
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def workers(redis_url):
    started = [
        WorkerProcess("support.services:PresenceRpcNode", redis_url, service=SERVICE)
        for _ in range(2)
    ]
    try:
        for w in started:
            w.wait_ready()
        yield started
    finally:
        for w in started:
            w.stop()


async def listening(r: aioredis.Redis) -> int:
    channel = ServiceKeys.for_service(SERVICE).sockets
    return dict(await r.pubsub_numsub(channel)).get(channel.encode(), 0)


async def test_every_worker_hears_of_each_websocket_client(redis_url, workers, edge):
    pids = {w.pid for w in workers}
    r = aioredis.Redis.from_url(redis_url, decode_responses=False)
    try:
        # Both workers subscribed (a client arriving earlier would go unheard: pub/sub).
        await eventually(lambda: _at_least(r, 2), what="2 workers listening", timeout=20)
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{edge}/{SERVICE}/ws") as ws:
                client_id = ws._response.headers[CLIENT_ID_HEADER]
                greeted = set()
                while len(greeted) < 2:
                    note = await ws.receive_json(timeout=30)
                    assert note["method"] == "welcome"
                    greeted.add(note["params"]["pid"])
                assert greeted == pids  # from each worker's on_websocket_connect
                # Requests still answer as before, from either worker.
                await ws.send_json({"jsonrpc": "2.0", "id": 1, "method": "pid"})
                assert (await ws.receive_json(timeout=30))["result"] in pids
        key = f"lab:presence:{client_id}"

        async def heard_everything():
            return len(await r.lrange(key, 0, -1)) == 4

        await eventually(heard_everything, what="2 connects and 2 disconnects", timeout=30)
        heard = sorted(e.decode() for e in await r.lrange(key, 0, -1))
    finally:
        await r.aclose()
    assert heard == sorted(
        f"{what}:{pid}:None" for what in ("connect", "disconnect") for pid in pids
    )


async def _at_least(r: aioredis.Redis, n: int) -> bool:
    return await listening(r) >= n


async def test_start_server_through_a_broker_runs_each_hook_once(redis_url):
    """A node served by `start_server()` with a broker is one worker of its service: its
    hooks come from its edge's presence messages (once each, `ws` None), not from the
    edge directly as well."""

    class Hooked(RpcNode):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.heard: list[tuple[str, str, object]] = []

        async def on_websocket_connect(self, client_id, websocket):
            self.heard.append(("connect", client_id, websocket))

        async def on_websocket_disconnect(self, client_id, websocket):
            self.heard.append(("disconnect", client_id, websocket))

    node = Hooked(port=free_port(), redis_url=redis_url, service="hooked")
    await node.start_server()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"http://127.0.0.1:{node.port}/ws") as ws:
                client_id = ws._response.headers[CLIENT_ID_HEADER]
                await eventually(lambda: len(node.heard) == 1, what="connect heard")
        await eventually(lambda: len(node.heard) == 2, what="disconnect heard")
    finally:
        await node.shutdown()
    assert node.heard == [("connect", client_id, None), ("disconnect", client_id, None)]


async def test_an_edge_stops_announcing_to_a_service_nobody_listens_for(redis_url, monkeypatch):
    """A service whose workers have no hooks costs one PUBLISH per UNHEARD_SECONDS."""
    monkeypatch.setattr("spark.runtime.edge.core.UNHEARD_SECONDS", 600.0)
    server = await EdgeServer(
        EdgeConfig(redis_url=redis_url, port=0, default_service="quiet")
    ).start()
    edge = server.edge
    try:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{server.url}/ws"):
                pass
            await eventually(lambda: "quiet" in edge._unheard, what="nobody heard")
            await eventually(lambda: edge._announcements.empty(), what="announcer idle")
            for _ in range(2):
                async with http.ws_connect(f"{server.url}/ws"):
                    pass
            # Both later connections came and went unannounced (and maybe the first's
            # departure, when it was queued after the answer that nobody listened).
            await eventually(lambda: edge.announcements_skipped >= 4, what="4 skipped")
            assert edge.announcements_skipped <= 5
    finally:
        await server.stop()
